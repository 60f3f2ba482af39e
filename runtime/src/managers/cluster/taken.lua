-- Marks the events through a sequence as taken, if the stream is still
-- the same one.
--
-- KEYS: meta. ARGV: epoch, sequence.
if redis.call('HGET', KEYS[1], 'e') == ARGV[1] and
   tonumber(redis.call('HGET', KEYS[1], 't')) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 't', ARGV[2])
end
return 1

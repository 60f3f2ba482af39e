-- Retires a user's stream whose numbering went backwards (Redis lost
-- acknowledged events: a failover, a restart from an older snapshot), so
-- no offset ever names two different events: a new stream id, sequence and
-- taken mark back to 0, the old entries dropped. Every client resuming
-- from the old stream is then told (`unknown_stream`). Only when the
-- stream is still the one the caller judged, so two nodes never rotate it
-- twice.
--
-- KEYS: meta, stream. ARGV: the judged epoch, candidate epoch, meta ttl ms.
-- Returns 1 when it rotated, 0 when the stream had changed meanwhile.
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'e', ARGV[2], 's', 0, 't', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1

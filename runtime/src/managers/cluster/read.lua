-- Reads what a connection catching up needs, in one atomic snapshot: the
-- stream id, head and taken mark, the oldest retained sequence, and the
-- entries from the first one the client is owed.
--
-- A user without a stream gets one (empty), so a client resuming from a
-- forgotten stream learns the new stream id from its resync notice.
--
-- An offset of the current stream beyond its head means the numbering went
-- backwards (Redis lost events a client had seen: a failover, a restart
-- from an older snapshot): the stream is retired for a new one (as
-- rotate.lua does), so the next events cannot reuse offsets that client
-- saw, and every client of the old stream is told (`unknown_stream`).
--
-- KEYS: meta, stream. ARGV: requested epoch ('' without an offset),
-- requested sequence, candidate epoch, meta ttl ms. Returns epoch, head,
-- taken, oldest, entries, rotated (0/1).
local meta = redis.call('HMGET', KEYS[1], 'e', 's', 't')
if not meta[1] then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', ARGV[3], 's', 0, 't', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  meta = {ARGV[3], '0', '0'}
end
local top = tonumber(meta[2])
local taken = tonumber(meta[3])
local rotated = 0
if ARGV[1] == meta[1] and tonumber(ARGV[2]) > top then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', ARGV[3], 's', 0, 't', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  meta = {ARGV[3], '0', '0'}
  top = 0
  taken = 0
  rotated = 1
end
local oldest = 0
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #first > 0 then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
local from
if ARGV[1] == '' then from = taken + 1
elseif ARGV[1] == meta[1] then from = tonumber(ARGV[2]) + 1
else from = 1 end
local entries = {}
if from <= top then entries = redis.call('XRANGE', KEYS[2], from .. '-0', '+') end
return {meta[1], top, taken, oldest, entries, rotated}

-- Appends a critical event: creates the stream id (epoch) when the user
-- has none, numbers the event, stores it (trimmed to MAXLEN), refreshes
-- the expiries and publishes it, all in one atomic step, so sequence,
-- history and publication agree on every node (as Centrifuge's
-- `broker_history_add_stream.lua` does). Refuses, storing nothing, when
-- the user is offline and the stream already holds `maxlen` events no
-- connection has taken: those are never trimmed away unannounced.
--
-- With an idempotency key (KEYS[3]), a key already set within its window
-- answers the first attempt's offset and stores nothing; otherwise the key
-- is set to this event's offset for the window, in the same atomic step.
--
-- KEYS[3] is the caller's idempotency key (ARGV[14] absent or 'key': a
-- retry is answered 'dup', and the caller says Duplicate), or the node's
-- attempt key (ARGV[14] = 'attempt': unique to this one call, so only a
-- re-send of this very command by the Redis client can find it set). A
-- re-send is answered 'again' with the first store's offset and pending
-- count, publishes nothing (the first store did), and when the caller
-- publishes (publish = 0) hands the message back again, rebuilt from the
-- same arguments, as the first store would have: the caller never got its
-- answer.
--
-- When the caller waits for replicas before publishing (publish = 0), the
-- message is returned instead of published: it is published once replicas
-- acknowledged the event, so no client sees an event a failover may lose.
--
-- On a Redis Cluster the bus channel carries the user's hash tag (one slot
-- with KEYS) and is published on with SPUBLISH (sharded pub/sub).
--
-- KEYS: meta, stream[, idempotency key]. ARGV: candidate epoch, maxlen,
-- stream ttl ms, meta ttl ms, type, data, timestamp, online (0/1), bus
-- channel, user, publish (0/1), publish command (PUBLISH or SPUBLISH)[,
-- idempotency window ms, key kind ('key' or 'attempt')].
local attempt = ARGV[14] == 'attempt'
local function message_of(epoch, seq)
  return cjson.encode({k = 'critical', u = ARGV[10], e = epoch,
    s = tostring(seq), y = ARGV[5], t = ARGV[7], d = ARGV[6]})
end
if KEYS[3] then
  local prior = redis.call('GET', KEYS[3])
  if prior then
    local sep = string.find(prior, ':', 1, true)
    local epoch = string.sub(prior, 1, sep - 1)
    if not attempt then
      return {'dup', epoch, tonumber(string.sub(prior, sep + 1))}
    end
    -- An attempt key holds epoch:seq:pending.
    local rest = string.sub(prior, sep + 1)
    local sep2 = string.find(rest, ':', 1, true)
    local seq = tonumber(string.sub(rest, 1, sep2 - 1))
    local pending = tonumber(string.sub(rest, sep2 + 1))
    if ARGV[11] == '1' then
      return {'again', epoch, seq, pending}
    end
    return {'again', epoch, seq, pending, message_of(epoch, seq)}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0, 't', 0)
end
local seq = tonumber(redis.call('HGET', KEYS[1], 's')) + 1
local taken = tonumber(redis.call('HGET', KEYS[1], 't'))
if ARGV[8] == '1' then
  taken = seq
elseif seq - taken > tonumber(ARGV[2]) then
  return {'full', seq - 1 - taken}
end
redis.call('HSET', KEYS[1], 's', seq, 't', taken)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], seq .. '-1', 'y', ARGV[5], 'd', ARGV[6], 't', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local message = message_of(epoch, seq)
if attempt then
  redis.call('SET', KEYS[3], epoch .. ':' .. seq .. ':' .. (seq - taken), 'PX', ARGV[13])
elseif KEYS[3] then
  redis.call('SET', KEYS[3], epoch .. ':' .. seq, 'PX', ARGV[13])
end
if ARGV[11] == '1' then
  redis.call(ARGV[12], ARGV[9], message)
  return {'ok', epoch, seq, seq - taken}
end
return {'ok', epoch, seq, seq - taken, message}

-- Cancels a job that has not finished: it moves to the failed set with a `canceled` outcome.
-- A running job's lease is removed, so its worker's renewal and result are refused, and its
-- id is pushed to that worker's cancel list so the guest is stopped at once.
--
-- KEYS: 1 job hash, 2 ready, 3 scheduled, 4 running, 5 failed
-- ARGV: 1 job id, 2 outcome (JSON), 3 the reason, for the attempt record
-- Returns {'canceled', previous state}, {'final', state} when the job already finished, or
-- {'missing', ''}.
local f = redis.call('HMGET', KEYS[1], 'state', 'task', 'worker', 'attempt', 'started_at',
  'token')
local state = f[1]
if not state then
  return {'missing', ''}
end
if state ~= 'queued' and state ~= 'scheduled' and state ~= 'running' then
  return {'final', state}
end
local now = now_ms()
-- 'wr:{tenant/queue}:ready' minus 'ready' is the queue's key prefix.
local prefix = string.sub(KEYS[2], 1, -6)
if state == 'queued' then
  redis.call('LREM', KEYS[2], 1, ARGV[1])
elseif state == 'scheduled' then
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  -- Removing the lease `<id>|<token>` fences the worker: its renewal and result are refused.
  redis.call('ZREM', KEYS[4], ARGV[1] .. '|' .. f[6])
  redis.call('HSET', KEYS[1], 'run:' .. f[6], cjson.encode({attempt = tonumber(f[4]),
    worker = f[3], started_at_ms = tonumber(f[5]), ended_at_ms = now,
    outcome = cjson.decode(ARGV[2]), decision = ARGV[3]}))
  local cancels = prefix .. 'cancel:' .. f[3]
  redis.call('RPUSH', cancels, ARGV[1])
  -- A worker that died never pops its list; it goes away on its own.
  redis.call('PEXPIRE', cancels, 3600000)
end
redis.call('HSET', KEYS[1], 'state', 'failed', 'finished_at', now, 'outcome', ARGV[2])
redis.call('ZADD', KEYS[5], now, ARGV[1])
count_move(prefix, f[2], state, 'failed')
return {'canceled', state}

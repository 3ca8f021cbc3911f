-- Adds one job to a queue.
--
-- KEYS: 1 job hash, 2 ready, 3 scheduled, 4 idempotency key (the job hash again when there is
--       no key), 5 wake
-- ARGV: 1 job id, 2 delay ms (0 = now), 3 due time ms since the epoch (0 = use the delay),
--       4 idempotency key lifetime ms (0 = no key), 5.. field/value pairs for the job hash
-- Returns {1, id} for a new job, or {0, id} when the idempotency key already named a job.
local now = now_ms()
local idem_ttl = tonumber(ARGV[4])
if idem_ttl > 0 then
  local existing = redis.call('GET', KEYS[4])
  if existing then
    return {0, existing}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('ERR job ' .. ARGV[1] .. ' already exists')
end

local due = now + tonumber(ARGV[2])
if tonumber(ARGV[3]) > 0 then
  due = tonumber(ARGV[3])
end
local fields = {}
local task = false
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
  if i % 2 == 1 and ARGV[i] == 'task' then
    task = ARGV[i + 1]
  end
end
-- 'wr:{tenant/queue}:ready' minus 'ready' is the queue's key prefix.
local prefix = string.sub(KEYS[2], 1, -6)
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'enqueued_at', now, 'attempt', 0, 'losses', 0,
  'token', 0, unpack(fields))
if due > now then
  redis.call('HSET', KEYS[1], 'state', 'scheduled', 'due_at', due)
  redis.call('ZADD', KEYS[3], due, ARGV[1])
  count_move(prefix, task, false, 'scheduled')
else
  redis.call('HSET', KEYS[1], 'state', 'queued')
  redis.call('RPUSH', KEYS[2], ARGV[1])
  count_move(prefix, task, false, 'queued')
end
if idem_ttl > 0 then
  redis.call('SET', KEYS[4], ARGV[1], 'PX', idem_ttl)
end
-- One token per enqueue wakes one idle worker; the list is capped so it cannot grow while no
-- worker is listening.
redis.call('RPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], -64, -1)
return {1, ARGV[1]}

-- One worker round trip: recover jobs whose lease expired, promote due jobs, drop results past
-- their retention, and lease up to N ready jobs to the calling worker.
--
-- KEYS: 1 ready, 2 scheduled, 3 running, 4 failed, 5 succeeded, 6 workers
-- ARGV: 1 key prefix of this queue (job keys are built from it; same hash tag), 2 worker id,
--       3 lease ms, 4 most jobs to lease, 5 worker losses after which a job fails,
--       6 default succeeded retention ms, 7 default failed retention ms (the queue's config
--       hash overrides both)
-- Returns {jobs, ms until the next scheduled job is due (-1 if none), server time ms}; each job
-- is {id, token, attempt, losses, task, digest, payload, policy, timeout_ms, memory_bytes}.
local prefix = ARGV[1]
local now = now_ms()
redis.call('ZADD', KEYS[6], now, ARGV[2])
-- The heartbeat set goes away an hour after the last worker stopped, so a worker that had
-- not yet seen its tenant deleted cannot leave it behind for good.
redis.call('PEXPIRE', KEYS[6], 3600000)

-- Leases that ran out: the worker was killed, stalled, or lost Redis. The attempt is recorded
-- as lost and not charged; a job that keeps losing its worker fails after a bounded count.
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  local job = prefix .. 'job:' .. id
  redis.call('ZREM', KEYS[3], id)
  if redis.call('EXISTS', job) == 1 then
    local f = redis.call('HMGET', job, 'attempt', 'worker', 'started_at', 'task')
    local outcome = {class = 'worker_lost',
      message = 'the worker stopped renewing its lease (killed, stalled or cut off from Redis)'}
    redis.call('RPUSH', job .. ':attempts', cjson.encode({attempt = tonumber(f[1]),
      worker = f[2], started_at_ms = tonumber(f[3]), ended_at_ms = now, outcome = outcome}))
    local losses = redis.call('HINCRBY', job, 'losses', 1)
    redis.call('HINCRBY', job, 'attempt', -1)
    if losses >= tonumber(ARGV[5]) then
      redis.call('HSET', job, 'state', 'failed', 'finished_at', now,
        'outcome', cjson.encode(outcome))
      redis.call('ZADD', KEYS[4], now, id)
      count_move(prefix, f[4], 'running', 'failed')
    else
      redis.call('HSET', job, 'state', 'queued')
      redis.call('LPUSH', KEYS[1], id)
      count_move(prefix, f[4], 'running', 'queued')
    end
  end
end

-- Due retries and delayed jobs go to the front of the ready list: they were due before the
-- jobs behind them were enqueued. Pushed in reverse so the earliest due runs first.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for i = #due, 1, -1 do
  local id = due[i]
  local job = prefix .. 'job:' .. id
  redis.call('ZREM', KEYS[2], id)
  redis.call('HSET', job, 'state', 'queued')
  redis.call('LPUSH', KEYS[1], id)
  count_move(prefix, redis.call('HGET', job, 'task'), 'scheduled', 'queued')
end

-- Retention is by age only; nothing is dropped because of a count.
local retention = redis.call('HMGET', prefix .. 'config', 'succeeded_retention_ms',
  'failed_retention_ms')
local succeeded_ms = tonumber(retention[1]) or tonumber(ARGV[6])
local failed_ms = tonumber(retention[2]) or tonumber(ARGV[7])
for _, pair in ipairs({{KEYS[5], succeeded_ms, 'succeeded'}, {KEYS[4], failed_ms, 'failed'}}) do
  local old = redis.call('ZRANGEBYSCORE', pair[1], '-inf', now - tonumber(pair[2]),
    'LIMIT', 0, 100)
  for _, id in ipairs(old) do
    count_move(prefix, redis.call('HGET', prefix .. 'job:' .. id, 'task'), pair[3], false)
    redis.call('DEL', prefix .. 'job:' .. id, prefix .. 'job:' .. id .. ':attempts')
    redis.call('ZREM', pair[1], id)
  end
end

local jobs = {}
local want = tonumber(ARGV[4])
while #jobs < want do
  local id = redis.call('LPOP', KEYS[1])
  if not id then
    break
  end
  local job = prefix .. 'job:' .. id
  -- An id whose hash is gone (deleted by hand or by retention) is skipped.
  if redis.call('EXISTS', job) == 1 then
    local token = redis.call('HINCRBY', job, 'token', 1)
    local attempt = redis.call('HINCRBY', job, 'attempt', 1)
    redis.call('HSET', job, 'state', 'running', 'worker', ARGV[2], 'started_at', now)
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), id)
    local f = redis.call('HMGET', job, 'losses', 'task', 'digest', 'payload', 'policy',
      'timeout_ms', 'memory_bytes')
    count_move(prefix, f[2], 'queued', 'running')
    jobs[#jobs + 1] = {id, token, attempt, f[1], f[2], f[3], f[4], f[5], f[6], f[7]}
  end
end

local next_due = -1
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then
  next_due = math.max(0, tonumber(first[2]) - now)
end
return {jobs, next_due, now}

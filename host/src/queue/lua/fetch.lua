-- One worker round trip: recover jobs whose lease expired, promote due jobs, lease up to N
-- ready jobs to the calling worker and, when asked, record the worker's heartbeat and drop
-- results past their retention.
--
-- KEYS: 1 ready, 2 scheduled, 3 running, 4 failed, 5 succeeded, 6 workers
-- ARGV: 1 key prefix of this queue (job keys are built from it; same hash tag), 2 worker id,
--       3 lease ms, 4 most jobs to lease, 5 worker losses after which a job fails,
--       6 default succeeded retention ms, 7 default failed retention ms (the queue's config
--       hash overrides both), 8 housekeeping: '1' to also beat the heartbeat and apply
--       retention (a worker asks about once a second, not on every fetch)
-- Returns {jobs, ms until the next scheduled job is due (-1 if none), server time ms, 1 when
-- retention left expired jobs for the next call else 0}; each job is {id, token, attempt,
-- losses, task, digest, payload, policy, timeout_ms, memory_bytes}.
local prefix = ARGV[1]
local now = now_ms()
local counts = {}
local more_expired = 0

-- Leases that ran out: the worker was killed, stalled, or lost Redis. The attempt is recorded
-- as lost and not charged; a job that keeps losing its worker fails after a bounded count.
-- A lease is the member `<id>|<token>` of the running set, scored by when it runs out.
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 100)
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[3], member)
  local id, lease_token = string.match(member, '^(.*)|(%d+)$')
  -- A bare id is a lease from a version before leases carried their token.
  id = id or member
  local job = prefix .. 'job:' .. id
  local f = redis.call('HMGET', job, 'attempt', 'worker', 'started_at', 'task', 'state', 'token')
  if f[5] == 'running' and (lease_token == nil or f[6] == lease_token) then
    local outcome = {class = 'worker_lost',
      message = 'the worker stopped renewing its lease (killed, stalled or cut off from Redis)'}
    redis.call('HSET', job, 'run:' .. f[6], cjson.encode({attempt = tonumber(f[1]),
      worker = f[2], started_at_ms = tonumber(f[3]), ended_at_ms = now, outcome = outcome}))
    local losses = redis.call('HINCRBY', job, 'losses', 1)
    redis.call('HINCRBY', job, 'attempt', -1)
    if losses >= tonumber(ARGV[5]) then
      redis.call('HSET', job, 'state', 'failed', 'finished_at', now,
        'outcome', cjson.encode(outcome))
      redis.call('ZADD', KEYS[4], now, id)
      tally(counts, f[4], 'running', 'failed')
    else
      redis.call('HSET', job, 'state', 'queued')
      redis.call('LPUSH', KEYS[1], id)
      tally(counts, f[4], 'running', 'queued')
    end
  end
end

-- Due retries and delayed jobs go to the front of the ready list: they were due before the
-- jobs behind them were enqueued. Pushed in reverse so the earliest due runs first.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
if #due > 0 then
  redis.call('ZREM', KEYS[2], unpack(due))
  local front = {}
  for i = #due, 1, -1 do
    local id = due[i]
    local job = prefix .. 'job:' .. id
    local task = redis.call('HGET', job, 'task')
    if task then
      redis.call('HSET', job, 'state', 'queued')
      front[#front + 1] = id
      tally(counts, task, 'scheduled', 'queued')
    end
  end
  if #front > 0 then
    redis.call('LPUSH', KEYS[1], unpack(front))
  end
end

if ARGV[8] == '1' then
  redis.call('ZADD', KEYS[6], now, ARGV[2])
  -- The heartbeat set goes away an hour after the last worker stopped, so a worker that had
  -- not yet seen its tenant deleted cannot leave it behind for good.
  redis.call('PEXPIRE', KEYS[6], 3600000)

  -- Retention is by age only; nothing is dropped because of a count.
  local retention = redis.call('HMGET', prefix .. 'config', 'succeeded_retention_ms',
    'failed_retention_ms')
  local succeeded_ms = tonumber(retention[1]) or tonumber(ARGV[6])
  local failed_ms = tonumber(retention[2]) or tonumber(ARGV[7])
  for _, set in ipairs({{KEYS[5], succeeded_ms, 'succeeded'}, {KEYS[4], failed_ms, 'failed'}}) do
    local old = redis.call('ZRANGEBYSCORE', set[1], '-inf', now - tonumber(set[2]),
      'LIMIT', 0, 1000)
    if #old == 1000 then
      more_expired = 1
    end
    if #old > 0 then
      local doomed = {}
      for _, id in ipairs(old) do
        local job = prefix .. 'job:' .. id
        tally(counts, redis.call('HGET', job, 'task'), set[3], false)
        doomed[#doomed + 1] = job
      end
      redis.call('UNLINK', unpack(doomed))
      redis.call('ZREM', set[1], unpack(old))
    end
  end
end

local jobs = {}
local want = tonumber(ARGV[4])
local ids = {}
if want > 0 then
  ids = redis.call('LPOP', KEYS[1], want) or {}
end
local leases = {}
local until_ms = int(now + tonumber(ARGV[3]))
local now_s = int(now)
for _, id in ipairs(ids) do
  local job = prefix .. 'job:' .. id
  local f = redis.call('HMGET', job, 'token', 'attempt', 'losses', 'task', 'digest', 'payload',
    'policy', 'timeout_ms', 'memory_bytes')
  -- An id whose hash is gone (deleted by hand or by retention) is skipped.
  if f[1] then
    local token = tonumber(f[1]) + 1
    local attempt = tonumber(f[2]) + 1
    local token_s = int(token)
    redis.call('HSET', job, 'state', 'running', 'worker', ARGV[2], 'started_at', now_s,
      'token', token_s, 'attempt', int(attempt))
    leases[#leases + 1] = until_ms
    leases[#leases + 1] = id .. '|' .. token_s
    tally(counts, f[4], 'queued', 'running')
    jobs[#jobs + 1] = {id, token, attempt, f[3], f[4], f[5], f[6], f[7], f[8], f[9]}
  end
end
if #leases > 0 then
  redis.call('ZADD', KEYS[3], unpack(leases))
end
apply_tally(prefix, counts)

local next_due = -1
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then
  next_due = math.max(0, tonumber(first[2]) - now)
end
return {jobs, next_due, now, more_expired}

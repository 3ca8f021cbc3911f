-- Adds a batch of jobs to a queue in one call.
--
-- KEYS: 1 ready, 2 scheduled, 3 wake
-- ARGV: 1 key prefix of this queue (job and idempotency keys are built from it; same hash
--       tag), then 11 values per job: id, delay ms (0 = now), due time ms since the epoch
--       (0 = use the delay), idempotency key name ('' = none), idempotency lifetime ms,
--       task, digest, payload, policy, timeout ms, memory bytes
-- Returns, per job, {1, id} for a new job or {0, id} when its idempotency key already named
-- a job.
--
-- Job ids are fresh UUIDv7s made by the caller, so no existence check is spent on them.
local prefix = ARGV[1]
local now = now_ms()
-- Numbers are turned into strings on every redis.call; doing it once saves Redis real time.
local now_s = int(now)
local counts = {}
local ready = {}
local replies = {}
local added = 0
for i = 2, #ARGV, 11 do
  local id, idem = ARGV[i], ARGV[i + 3]
  local existing = false
  if idem ~= '' then
    existing = redis.call('GET', idem)
  end
  if existing then
    replies[#replies + 1] = {0, existing}
  else
    local due = now + tonumber(ARGV[i + 1])
    if tonumber(ARGV[i + 2]) > 0 then
      due = tonumber(ARGV[i + 2])
    end
    local task = ARGV[i + 5]
    local job = prefix .. 'job:' .. id
    local state = 'queued'
    if due > now then
      state = 'scheduled'
    end
    redis.call('HSET', job, 'id', id, 'enqueued_at', now_s, 'attempt', '0', 'losses', '0',
      'token', '0', 'task', task, 'digest', ARGV[i + 6], 'payload', ARGV[i + 7],
      'policy', ARGV[i + 8], 'timeout_ms', ARGV[i + 9], 'memory_bytes', ARGV[i + 10],
      'state', state)
    if state == 'scheduled' then
      redis.call('HSET', job, 'due_at', int(due))
      redis.call('ZADD', KEYS[2], int(due), id)
    else
      ready[#ready + 1] = id
    end
    tally(counts, task, false, state)
    if idem ~= '' then
      redis.call('SET', idem, id, 'PX', ARGV[i + 4])
    end
    added = added + 1
    replies[#replies + 1] = {1, id}
  end
end
if #ready > 0 then
  redis.call('RPUSH', KEYS[1], unpack(ready))
end
apply_tally(prefix, counts)
wake(KEYS[3], added)
return replies

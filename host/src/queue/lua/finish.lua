-- Records how a batch of attempts ended and moves each job on, for the jobs whose lease the
-- caller still holds.
--
-- KEYS: 1 running, 2 ready, 3 scheduled, 4 failed, 5 succeeded, 6 wake
-- ARGV: 1 key prefix of this queue (job keys are built from it; same hash tag), then 10 values
--       per job: id, lease token, decision (succeed, retry, fail or release), retry delay ms,
--       whether the attempt counts (1 or 0), result bytes, outcome (JSON), attempt record
--       (a JSON object without its start and end times, which are added here), the server
--       time the lease started (ms, as the fetch returned it), task name
--
-- The lease check costs one ZMSCORE for the whole batch: a lease is the member
-- `<id>|<token>` of the running set, and it is gone once the lease expired and was taken
-- over, or the job was canceled. The attempt record is stored in the job's hash, under
-- `run:<token>`, in the same HSET that moves the job on.
-- Returns one number per job: 1, or 0 when its lease is no longer the caller's (fenced:
-- nothing is written for that job).
local prefix = ARGV[1]
local now = now_ms()
-- Numbers are turned into strings on every redis.call; doing it once saves Redis real time.
local now_s = int(now)
local counts = {}
local members = {}
for i = 2, #ARGV, 10 do
  members[#members + 1] = ARGV[i] .. '|' .. ARGV[i + 1]
end
local leased = redis.call('ZMSCORE', KEYS[1], unpack(members))
local done = {}
local replies = {}
local succeeded = {}
local failed = {}
local requeued = 0
for k = 1, #members do
  local i = 2 + (k - 1) * 10
  if not leased[k] then
    replies[k] = 0
  else
    replies[k] = 1
    done[#done + 1] = members[k]
    local id, decision, outcome = ARGV[i], ARGV[i + 2], ARGV[i + 6]
    local job = prefix .. 'job:' .. id
    -- The record arrives as JSON text; the times are spliced in before its closing brace
    -- rather than by decoding and encoding it.
    local run = 'run:' .. ARGV[i + 1]
    local record = string.sub(ARGV[i + 7], 1, -2) .. ',"started_at_ms":' .. ARGV[i + 8]
      .. ',"ended_at_ms":' .. now_s .. '}'
    local task = ARGV[i + 9]
    if decision == 'succeed' then
      redis.call('HSET', job, 'state', 'succeeded', 'result', ARGV[i + 5], 'finished_at', now_s,
        'outcome', outcome, run, record)
      succeeded[#succeeded + 1] = now_s
      succeeded[#succeeded + 1] = id
      tally(counts, task, 'running', 'succeeded')
    elseif decision == 'fail' then
      redis.call('HSET', job, 'state', 'failed', 'finished_at', now_s, 'outcome', outcome,
        run, record)
      failed[#failed + 1] = now_s
      failed[#failed + 1] = id
      tally(counts, task, 'running', 'failed')
    else
      if ARGV[i + 4] == '0' then
        redis.call('HINCRBY', job, 'attempt', -1)
      end
      local delay = tonumber(ARGV[i + 3])
      if decision == 'release' then
        -- Released at shutdown: it had started, so it goes back to the front.
        redis.call('HSET', job, 'state', 'queued', 'outcome', outcome, run, record)
        redis.call('LPUSH', KEYS[2], id)
        tally(counts, task, 'running', 'queued')
      elseif delay > 0 then
        local due = int(now + delay)
        redis.call('HSET', job, 'state', 'scheduled', 'due_at', due, 'outcome', outcome, run,
          record)
        redis.call('ZADD', KEYS[3], due, id)
        tally(counts, task, 'running', 'scheduled')
      else
        redis.call('HSET', job, 'state', 'queued', 'outcome', outcome, run, record)
        redis.call('RPUSH', KEYS[2], id)
        tally(counts, task, 'running', 'queued')
      end
      requeued = requeued + 1
    end
  end
end
if #done > 0 then
  redis.call('ZREM', KEYS[1], unpack(done))
end
if #succeeded > 0 then
  redis.call('ZADD', KEYS[5], unpack(succeeded))
end
if #failed > 0 then
  redis.call('ZADD', KEYS[4], unpack(failed))
end
apply_tally(prefix, counts)
wake(KEYS[6], requeued)
return replies

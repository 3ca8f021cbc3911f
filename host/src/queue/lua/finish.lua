-- Records how an attempt ended and moves the job on, if the caller still holds its lease.
--
-- KEYS: 1 job hash, 2 attempts, 3 running, 4 ready, 5 scheduled, 6 failed, 7 succeeded, 8 wake
-- ARGV: 1 job id, 2 lease token, 3 decision (succeed, retry, fail or release), 4 retry delay ms,
--       5 whether the attempt counts (1 or 0), 6 result bytes, 7 outcome (JSON),
--       8 attempt record (JSON object; the server's start and end times are added here)
-- Returns 1, or 0 when the lease is no longer the caller's (fenced: nothing is written).
local f = redis.call('HMGET', KEYS[1], 'state', 'token', 'started_at', 'task')
if f[1] ~= 'running' or f[2] ~= ARGV[2] then
  return 0
end
local now = now_ms()
-- 'wr:{tenant/queue}:ready' minus 'ready' is the queue's key prefix.
local prefix = string.sub(KEYS[4], 1, -6)
local record = cjson.decode(ARGV[8])
record['started_at_ms'] = tonumber(f[3])
record['ended_at_ms'] = now
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('RPUSH', KEYS[2], cjson.encode(record))
redis.call('HSET', KEYS[1], 'outcome', ARGV[7])

local decision = ARGV[3]
if decision == 'succeed' then
  redis.call('HSET', KEYS[1], 'state', 'succeeded', 'result', ARGV[6], 'finished_at', now)
  redis.call('ZADD', KEYS[7], now, ARGV[1])
  count_move(prefix, f[4], 'running', 'succeeded')
elseif decision == 'fail' then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'finished_at', now)
  redis.call('ZADD', KEYS[6], now, ARGV[1])
  count_move(prefix, f[4], 'running', 'failed')
else
  if ARGV[5] == '0' then
    redis.call('HINCRBY', KEYS[1], 'attempt', -1)
  end
  local delay = tonumber(ARGV[4])
  if decision == 'release' then
    -- Released at shutdown: it had started, so it goes back to the front.
    redis.call('HSET', KEYS[1], 'state', 'queued')
    redis.call('LPUSH', KEYS[4], ARGV[1])
    count_move(prefix, f[4], 'running', 'queued')
  elseif delay > 0 then
    redis.call('HSET', KEYS[1], 'state', 'scheduled', 'due_at', now + delay)
    redis.call('ZADD', KEYS[5], now + delay, ARGV[1])
    count_move(prefix, f[4], 'running', 'scheduled')
  else
    redis.call('HSET', KEYS[1], 'state', 'queued')
    redis.call('RPUSH', KEYS[4], ARGV[1])
    count_move(prefix, f[4], 'running', 'queued')
  end
  redis.call('RPUSH', KEYS[8], '1')
  redis.call('LTRIM', KEYS[8], -64, -1)
end
return 1

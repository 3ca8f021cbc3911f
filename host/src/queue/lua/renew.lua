-- Extends the leases a worker still holds, and tells it which it has lost.
--
-- KEYS: 1 running, 2 workers
-- ARGV: 1 key prefix, 2 worker id, 3 lease ms, then pairs of job id and lease token
-- Returns the ids whose lease is no longer this worker's: their guests must be stopped.
local now = now_ms()
redis.call('ZADD', KEYS[2], now, ARGV[2])
-- The heartbeat set goes away an hour after the last worker stopped, so a worker that had
-- not yet seen its tenant deleted cannot leave it behind for good.
redis.call('PEXPIRE', KEYS[2], 3600000)
local lost = {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local f = redis.call('HMGET', ARGV[1] .. 'job:' .. id, 'state', 'token')
  if f[1] == 'running' and f[2] == token then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[3]), id)
  else
    lost[#lost + 1] = id
  end
end
return lost

-- Extends the leases a worker still holds, and tells it which it has lost.
--
-- KEYS: 1 running, 2 workers
-- ARGV: 1 key prefix (unused; kept so every queue script takes it first), 2 worker id,
--       3 lease ms, then pairs of job id and lease token
-- Returns the ids whose lease is no longer this worker's: their guests must be stopped.
local now = now_ms()
redis.call('ZADD', KEYS[2], now, ARGV[2])
-- The heartbeat set goes away an hour after the last worker stopped, so a worker that had
-- not yet seen its tenant deleted cannot leave it behind for good.
redis.call('PEXPIRE', KEYS[2], 3600000)
local lost = {}
if #ARGV < 4 then
  return lost
end
-- A lease is the member `<id>|<token>` of the running set; one that is gone was taken over
-- or canceled.
local members = {}
for i = 4, #ARGV, 2 do
  members[#members + 1] = ARGV[i] .. '|' .. ARGV[i + 1]
end
local leased = redis.call('ZMSCORE', KEYS[1], unpack(members))
local renewed = {}
local until_ms = int(now + tonumber(ARGV[3]))
for k, member in ipairs(members) do
  if leased[k] then
    renewed[#renewed + 1] = until_ms
    renewed[#renewed + 1] = member
  else
    lost[#lost + 1] = ARGV[2 + 2 * k]
  end
end
if #renewed > 0 then
  redis.call('ZADD', KEYS[1], 'XX', unpack(renewed))
end
return lost

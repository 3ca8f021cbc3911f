-- Shared prelude of every script: the Redis server's clock in milliseconds. Scripts never
-- trust a worker's clock, so skew between machines cannot move retries or leases.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

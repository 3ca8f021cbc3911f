-- A tenant's running-jobs cap, shared by every worker: a sorted set of slot holders, each with
-- the deadline of the lease it covers. A holder that stops renewing (its worker died) drops
-- out once its deadline passes, so a crash never leaks a slot for longer than a lease.
--
-- KEYS: 1 the tenant's slots zset
-- ARGV: 1 operation (take, renew or give), 2 lease ms, 3 cap (take only), then holder names
-- take: adds as many of the holders as fit under the cap; returns the names added.
-- renew: extends the deadline of the holders still present; returns the names that were gone.
-- give: removes the holders; returns the number removed.
local now = now_ms()
local op = ARGV[1]
local deadline = now + tonumber(ARGV[2])
if op == 'give' then
  local removed = 0
  for i = 4, #ARGV do
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
  return removed
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
if op == 'take' then
  local free = tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[1])
  for i = 4, #ARGV do
    if free <= 0 then
      break
    end
    redis.call('ZADD', KEYS[1], deadline, ARGV[i])
    out[#out + 1] = ARGV[i]
    free = free - 1
  end
else
  for i = 4, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
      redis.call('ZADD', KEYS[1], deadline, ARGV[i])
    else
      out[#out + 1] = ARGV[i]
    end
  end
end
return out

-- Writes a tenant's record and token index together, if the record is still what the caller
-- read (compare and set, so two admins cannot overwrite each other's change unseen).
--
-- KEYS: 1 tenants hash (name -> record), 2 tokens hash (sha256 of token -> name)
-- ARGV: 1 name, 2 the record the caller read ('' = must not exist), 3 the new record
--       ('' = delete), 4 token hash to drop ('' = none), 5 token hash to add ('' = none)
-- Returns 1, or 0 when the record changed since it was read (nothing is written).
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('HDEL', KEYS[2], ARGV[4])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[1])
end
return 1

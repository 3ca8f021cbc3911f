#!lua flags=no-writes
-- Resolves an API token in one round trip: the tenant its hash names, and that tenant's record.
-- Declared without writes, so tokens still resolve while Redis is full and refusing writes.
--
-- KEYS: 1 tokens hash (sha256 of token -> name), 2 tenants hash (name -> record)
-- ARGV: 1 the token's hash
-- Returns {name, record}, or nil when the token is unknown or its tenant is gone.
local name = redis.call('HGET', KEYS[1], ARGV[1])
if not name then
  return false
end
local record = redis.call('HGET', KEYS[2], name)
if not record then
  return false
end
return {name, record}

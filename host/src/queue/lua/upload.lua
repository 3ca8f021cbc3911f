-- Stores a component (content-addressed) and records a new version of a task.
--
-- KEYS: 1 component key, 2 the task's version list, 3 tasks hash
-- ARGV: 1 component bytes, 2 task name, 3 version record (JSON object; its number and upload
--       time are added here)
-- Returns the new version record as JSON.
local now = now_ms()
-- The same bytes always have the same key, so storing them again changes nothing.
redis.call('SET', KEYS[1], ARGV[1])
local record = cjson.decode(ARGV[3])
record['version'] = redis.call('LLEN', KEYS[2]) + 1
record['uploaded_at_ms'] = now
local encoded = cjson.encode(record)
redis.call('RPUSH', KEYS[2], encoded)
redis.call('HSET', KEYS[3], ARGV[2], encoded)
return encoded

-- Puts a failed job back in the ready list with a fresh set of attempts.
--
-- KEYS: 1 job hash, 2 failed, 3 ready, 4 wake
-- ARGV: 1 job id, 2 component digest to run from now on ('' keeps the job's own)
-- Returns 1, or 0 when the job does not exist or is not failed.
if redis.call('HGET', KEYS[1], 'state') ~= 'failed' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempt', 0, 'losses', 0)
redis.call('HDEL', KEYS[1], 'finished_at')
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'digest', ARGV[2])
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[1])
-- 'wr:{tenant/queue}:ready' minus 'ready' is the queue's key prefix.
count_move(string.sub(KEYS[3], 1, -6), redis.call('HGET', KEYS[1], 'task'), 'failed', 'queued')
redis.call('RPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], -64, -1)
return 1

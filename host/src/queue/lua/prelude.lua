-- Shared prelude of every script.

-- The Redis server's clock in milliseconds. Scripts never trust a worker's clock, so skew
-- between machines cannot move retries or leases.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Keeps the per-task counts in `<prefix>counts` (field `<task>|<state>`) in step with a job
-- moving from state `from` to state `to` (either may be false: a new or a deleted job). The
-- counts key shares the queue's hash tag.
local function count_move(prefix, task, from, to)
  if not task then
    return
  end
  if from then
    redis.call('HINCRBY', prefix .. 'counts', task .. '|' .. from, -1)
  end
  if to then
    redis.call('HINCRBY', prefix .. 'counts', task .. '|' .. to, 1)
  end
end

#!lua
-- Shared prelude of every script. The shebang line above declares the script with flags (none),
-- so Redis refuses it whole, before its first command, while it is at `maxmemory`; a script
-- without one would run until its first write that needs memory and stop there, half done.

-- The Redis server's clock in milliseconds. Scripts never trust a worker's clock, so skew
-- between machines cannot move retries or leases.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An integer as the decimal string Redis stores. Redis turns a Lua number argument into text
-- with `%.17g` and Lua's `tostring` uses `%.14g`: both take glibc's floating-point printer,
-- which showed up as about 5% of Redis's CPU time in the queue bench; `%d` does not.
local function int(n)
  return string.format('%d', n)
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

-- Batched form of `count_move` for scripts that move many jobs: `tally(t, task, from, to)`
-- adds to the table `t`, and `apply_tally(prefix, t)` writes one HINCRBY per changed count
-- instead of two per job.
local function tally(t, task, from, to)
  if not task then
    return
  end
  if from then
    local field = task .. '|' .. from
    t[field] = (t[field] or 0) - 1
  end
  if to then
    local field = task .. '|' .. to
    t[field] = (t[field] or 0) + 1
  end
end

local function apply_tally(prefix, t)
  for field, delta in pairs(t) do
    if delta ~= 0 then
      redis.call('HINCRBY', prefix .. 'counts', field, int(delta))
    end
  end
end

-- Wakes up to `n` idle workers (one token each). The list is capped so it cannot grow while
-- no worker is listening.
local function wake(key, n)
  if n <= 0 then
    return
  end
  local tokens = {}
  for i = 1, math.min(n, 16) do
    tokens[i] = '1'
  end
  redis.call('RPUSH', key, unpack(tokens))
  redis.call('LTRIM', key, -64, -1)
end

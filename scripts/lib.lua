-- lib.lua: helpers prepended to every transition script (not a transition itself).
-- Conventions: KEYS[1] is the queue's key prefix "<ns>:{<queue>}:"; every key a
-- script touches is built from it, so all of them share the queue's hash tag.
-- The clock is Redis TIME, so every replica agrees on one clock.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Strict priority (0..9, higher first), FIFO inside one priority.
local function pending_score(priority, seq)
  return (9 - priority) * 10000000000000 + seq
end

-- Appends a lifecycle event to the queue's capped stream (the source of SSE).
local function emit(p, typ, id, node, state)
  redis.call('XADD', p .. 'events', 'MAXLEN', '~', 10000, '*',
    'type', typ, 'task', id, 'node', node or '', 'state', state or '')
end

local function incr_load(p, node, by)
  if node and node ~= '' then
    local v = redis.call('HINCRBY', p .. 'load', node, by)
    if v <= 0 then redis.call('HDEL', p .. 'load', node) end
  end
end

local function stat(p, field, by)
  redis.call('HINCRBY', p .. 'stats', field, by or 1)
end

-- Moves a task into a terminal state: its zset (by finish time) and its retention.
local function finish(p, id, tkey, state, now)
  redis.call('HSET', tkey, 'state', state, 'finished_at', now, 'lease_expires', '')
  redis.call('ZADD', p .. state, now, id)
  local retention = tonumber(redis.call('HGET', tkey, 'retention_ms') or '0') or 0
  if retention > 0 then redis.call('PEXPIRE', tkey, retention) end
  stat(p, state)
end

-- A running task's attempt ended without success (fail, or an expired lease).
-- Returns the new state: cancelled, retrying or failed.
local function fail_attempt(p, id, tkey, now, err, retryable, jitter)
  local h = redis.call('HMGET', tkey, 'attempts', 'max_attempts', 'backoff_initial',
    'backoff_max', 'node', 'cancel_requested')
  local attempts = tonumber(h[1]) or 0
  local max_attempts = tonumber(h[2]) or 1
  local node = h[5] or ''
  redis.call('ZREM', p .. 'running', id)
  incr_load(p, node, -1)
  if node ~= '' then redis.call('SREM', p .. 'cancels:' .. node, id) end
  redis.call('HSET', tkey, 'error', err)
  local state
  if h[6] == '1' then
    state = 'cancelled'
    finish(p, id, tkey, state, now)
  elseif retryable and attempts < max_attempts then
    state = 'retrying'
    local initial = tonumber(h[3]) or 1000
    local cap = tonumber(h[4]) or 300000
    local delay = math.min(cap, initial * (2 ^ (attempts - 1)))
    -- "Equal jitter": half fixed, half random, so retries of a burst spread out.
    delay = math.floor(delay / 2 + (delay / 2) * jitter)
    redis.call('HSET', tkey, 'state', state, 'run_at', now + delay, 'lease_expires', '')
    redis.call('ZADD', p .. 'retrying', now + delay, id)
    stat(p, 'retried')
  else
    state = 'failed'
    finish(p, id, tkey, state, now)
  end
  emit(p, 'task.' .. state, id, node, state)
  return state
end

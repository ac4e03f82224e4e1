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

-- ----- Reports (complete.lua, report_many.lua) -----
-- A report batch defers what can be written once per call: the clock (one TIME), the
-- ZREM from `running`, the load per node and the 'done' wake-up (one PUBLISH per node,
-- "done <prefix> <node> <id> <id> ...", read by the reconciler).

local function report_acc()
  return {running = {}, load = {}, done = {}, nodes = {}}
end

local function report_now(acc)
  if not acc.now then acc.now = now_ms() end
  return acc.now
end

local function report_done(acc, node, id)
  local d = acc.done[node]
  if not d then
    d = {}
    acc.done[node] = d
    acc.nodes[#acc.nodes + 1] = node
  end
  d[#d + 1] = id
end

-- Accepts a node's result for its current lease. node "" = any (admin).
-- Returns: {0, state, run_ms, node} accepted (state succeeded, or cancelled when a
-- cancel was pending); {3, state} a repeat of the completion already accepted for this
-- very lease (answered like the first, nothing written); {1} no such task;
-- {2, state} stale or foreign token: nothing written.
local function complete_one(p, acc, id, node, fence, nonce, result)
  local tkey = p .. 't:' .. id
  local h = redis.call('HMGET', tkey, 'state', 'node', 'fence', 'nonce', 'started_at',
    'cancel_requested', 'result')
  if not h[1] then return {1} end
  local same_lease = h[3] == fence and h[4] == nonce and (node == '' or h[2] == node)
  -- A completion accepted while a cancel was pending ended the task cancelled (with its
  -- result kept; only a completion writes a result, and retry clears it): a repeat too.
  local completed = h[1] == 'succeeded' or (h[1] == 'cancelled' and h[7] ~= false)
  if completed and same_lease then return {3, h[1]} end
  if h[1] ~= 'running' or not same_lease then return {2, h[1]} end
  local now = report_now(acc)
  acc.running[#acc.running + 1] = id
  acc.load[h[2]] = (acc.load[h[2]] or 0) - 1
  local state = 'succeeded'
  if h[6] == '1' then
    state = 'cancelled'
    -- Only a pending cancel puts the id in the node's cancels set.
    redis.call('SREM', p .. 'cancels:' .. h[2], id)
  end
  redis.call('HSET', tkey, 'result', result)
  finish(p, id, tkey, state, now)
  emit(p, 'task.' .. state, id, h[2], state)
  report_done(acc, h[2], id)
  return {0, state, now - (tonumber(h[5]) or now), h[2]}
end

-- A node reports that its current attempt failed (fail.lua's semantics).
-- Returns: {0, state, run_ms, node} with state retrying, failed or cancelled;
-- {3, state} a repeat for the same lease already recorded; {1} no such task;
-- {2, state} stale or foreign token: nothing written.
local function fail_one(p, acc, id, node, fence, nonce, err, retryable, jitter)
  local tkey = p .. 't:' .. id
  local h = redis.call('HMGET', tkey, 'state', 'node', 'fence', 'nonce', 'started_at')
  if not h[1] then return {1} end
  local same_lease = h[3] == fence and h[4] == nonce and (node == '' or h[2] == node)
  if h[1] ~= 'running' then
    if same_lease and (h[1] == 'retrying' or h[1] == 'failed' or h[1] == 'cancelled') then
      return {3, h[1]}
    end
    return {2, h[1]}
  end
  if not same_lease then return {2, h[1]} end
  local now = report_now(acc)
  local state = fail_attempt(p, id, tkey, now, err, retryable, jitter)
  report_done(acc, h[2], id)
  return {0, state, now - (tonumber(h[5]) or now), h[2]}
end

-- Writes what a report batch deferred.
local function report_flush(p, channel, acc)
  local r = acc.running
  for i = 1, #r, 1000 do
    redis.call('ZREM', p .. 'running', unpack(r, i, math.min(i + 999, #r)))
  end
  for _, node in ipairs(acc.nodes) do
    if acc.load[node] then incr_load(p, node, acc.load[node]) end
    local ids = acc.done[node]
    for i = 1, #ids, 1000 do
      redis.call('PUBLISH', channel, 'done ' .. p .. ' ' .. node .. ' '
        .. table.concat(ids, ' ', i, math.min(i + 999, #ids)))
    end
  end
end

-- lib.lua: helpers prepended to every script (not a transition itself).
-- Conventions: KEYS[1] is the queue's key prefix "<ns>:{<queue>}:" (or a batch's,
-- "<ns>:{~batch:<id>}:"); every key a script touches is built from it with the k_*
-- functions below, so all of them share one hash tag. Scripts of nodes, schedules and
-- locks get their keys whole, as KEYS, from src/store/keys.rs.
-- The clock is Redis TIME, so every replica agrees on one clock.

-- ----- Key schema -----
-- One function per key built in Lua, mirroring src/store/keys.rs exactly: k_<name>(p,
-- ...) is `Keys::<name>(queue, ...)` with p = `Keys::queue_prefix(queue)` (batch keys:
-- p = `Keys::batch_prefix(id)`). Change both together; the unit test in
-- src/store/scripts.rs evaluates these in a real redis-server and compares.
local function k_task(p, id) return p .. 't:' .. id end
local function k_state_index(p, state) return p .. state end
local function k_inbox(p, node) return p .. 'inbox:' .. node end
local function k_load(p) return p .. 'load' end
local function k_cancels(p, node) return p .. 'cancels:' .. node end
local function k_conf(p) return p .. 'conf' end
local function k_stats(p) return p .. 'stats' end
local function k_events(p) return p .. 'events' end
local function k_followups(p) return p .. 'followups' end
local function k_dependents(p, id) return p .. 'dependents:' .. id end
local function k_dep_done(p, id) return p .. 'depdone:' .. id end
local function k_semaphore(p, key) return p .. 'sem:' .. key end
local function k_unique(p, key) return p .. 'uniq:' .. key end
local function k_idempotency(p, sha) return p .. 'idem:' .. sha end
local function k_seq(p) return p .. 'seq' end
local function k_bucket(p) return p .. 'bucket' end
local function k_batch_meta(p) return p .. 'meta' end
local function k_batch_children(p) return p .. 'children' end
local function k_batch_done(p) return p .. 'done' end

-- ----- Return codes -----
-- The first element of a script's {code, ...} reply, mirroring `Code` in
-- src/store/reply.rs (compared by the same unit test).
local OK = 0          -- done; the rest of the reply says how
local NOT_FOUND = 1   -- what the script names (task, node, batch, schedule) does not exist
local CONFLICT = 2    -- its state refuses the call: stale lease, illegal transition,
                      -- ended, finished, taken, held by another; a task's state follows
local REPEAT = 3      -- already done exactly so (same lease, same idempotency key, same
                      -- tick): nothing written, answered as the first time
local NOT_LEADER = 4  -- the caller's scheduler leader token is not current

-- ----- Wake-up messages -----
-- Published on the wake channel, parsed by `Wakeup::parse` in src/store/wakeups.rs
-- (compared by the same unit test). `ids`: task ids separated by one space.
local function wake_new(p) return 'new ' .. p end
local function wake_assigned(p, node) return 'assigned ' .. p .. ' ' .. node end
local function wake_done(p, node, ids) return 'done ' .. p .. ' ' .. node .. ' ' .. ids end

-- ----- Defaults -----
-- A task field equal to its default is not stored (src/store/tasks.rs leaves it out,
-- `task_from_hash` reads it back); these mirror crate::domain::spec (compared by the
-- unit test in src/store/scripts.rs).
local DEFAULT_MAX_ATTEMPTS = 3
local DEFAULT_TIMEOUT_MS = 30000
local DEFAULT_BACKOFF_INITIAL_MS = 1000
local DEFAULT_BACKOFF_MAX_MS = 300000
local DEFAULT_RETENTION_MS = 604800000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Strict priority (0..9, higher first), FIFO inside one priority.
local function pending_score(priority, seq)
  return (9 - priority) * 10000000000000 + seq
end

-- Lifecycle events, the source of SSE, in each queue's capped stream. One entry per
-- call and kind (type, node, state): `task` when it is one task, else `tasks`, the ids
-- separated by one space (src/store/event_entry.rs reads both). Written by flush_all.
local acc_events, acc_event_keys = {}, {}
-- The entry of the last emit: a call emits one kind many times in a row, and comparing
-- four interned strings is cheaper than building the key.
local last_e = nil

local function emit(p, typ, id, node, state)
  node, state = node or '', state or ''
  local e = last_e
  if not (e and e.p == p and e.typ == typ and e.node == node and e.state == state) then
    local key = p .. '|' .. typ .. '|' .. node .. '|' .. state
    e = acc_events[key]
    if not e then
      e = {p = p, typ = typ, node = node, state = state, ids = {}}
      acc_events[key] = e
      acc_event_keys[#acc_event_keys + 1] = key
    end
    last_e = e
  end
  local ids = e.ids
  ids[#ids + 1] = id
end

-- A task id in its own queue's stream is stored without its queue: `<ulid>.<queue>`
-- (the stream's hash tag) as `<ulid>`; src/store/events.rs puts the queue back. Any
-- other id is stored whole.
local function flush_events()
  for _, key in ipairs(acc_event_keys) do
    local e = acc_events[key]
    local ids = e.ids
    local tag = string.match(e.p, '{(.-)}')
    if tag then
      local suffix, cut = '.' .. tag, -#tag - 1
      for i = 1, #ids do
        local id = ids[i]
        if string.sub(id, cut) == suffix and #id > #suffix then ids[i] = string.sub(id, 1, cut - 1) end
      end
    end
    for i = 1, #ids, 1000 do
      local last = math.min(i + 999, #ids)
      local field, value = 'tasks', table.concat(ids, ' ', i, last)
      if last == i then field = 'task' end
      redis.call('XADD', k_events(e.p), 'MAXLEN', '~', 10000, '*',
        'type', e.typ, field, value, 'node', e.node, 'state', e.state)
    end
  end
  acc_events, acc_event_keys, last_e = {}, {}, nil
end

-- ----- Per-call counters -----
-- Statistics and node loads change by one many times in a call; the steps are summed
-- here and written once per field by flush_all(), which runs after every script's body
-- (src/store/scripts.rs wraps each script so). A call reads a load (dispatch's node
-- budget, queue_budget) before making its own changes to it.
local acc_stats, acc_load = {}, {}
-- State-index writes of many tasks, one ZADD / ZREM per key (member order kept).
local acc_zadd, acc_zrem, acc_keys = {}, {}, {}

local function deferred(acc, key)
  local a = acc[key]
  if not a then
    a = {}
    acc[key] = a
    acc_keys[#acc_keys + 1] = key
  end
  return a
end

local function zadd_later(key, score, member)
  local a = deferred(acc_zadd, key)
  a[#a + 1] = score
  a[#a + 1] = member
end

local function zrem_later(key, member)
  local a = deferred(acc_zrem, key)
  a[#a + 1] = member
end

local function bump(t, p, field, by)
  local s = t[p]
  if not s then
    s = {}
    t[p] = s
  end
  s[field] = (s[field] or 0) + by
end

local function incr_load(p, node, by)
  if node and node ~= '' then bump(acc_load, p, node, by) end
end

local function stat(p, field, by)
  bump(acc_stats, p, field, by or 1)
end

-- One command per index: `cmd key <items>` in chunks of `step` items.
local function flush_index(acc, cmd, step)
  for _, key in ipairs(acc_keys) do
    local a = acc[key]
    if a then
      for i = 1, #a, step do redis.call(cmd, key, unpack(a, i, math.min(i + step - 1, #a))) end
      acc[key] = nil
    end
  end
end

local function flush_all()
  -- Removals first: one call never removes a member it added to the same index.
  flush_index(acc_zrem, 'ZREM', 1000)
  flush_index(acc_zadd, 'ZADD', 2000)
  acc_keys = {}
  for p, s in pairs(acc_stats) do
    for field, n in pairs(s) do
      if n ~= 0 then redis.call('HINCRBY', k_stats(p), field, n) end
    end
  end
  for p, s in pairs(acc_load) do
    for node, n in pairs(s) do
      if n ~= 0 then
        local v = redis.call('HINCRBY', k_load(p), node, n)
        if v <= 0 then redis.call('HDEL', k_load(p), node) end
      end
    end
  end
  acc_stats, acc_load = {}, {}
  flush_events()
end

-- Frees the task's concurrency slot, if it holds one (a semaphore entry scored by its
-- lease deadline, so a slot whose holder vanished frees itself when that passes).
local function release_slot(p, id, ckey)
  if ckey then redis.call('ZREM', k_semaphore(p, ckey), id) end
end

-- Moves a task into a terminal state: its zset (by finish time) and its retention.
-- Frees its unique key (unless it has its own TTL) and concurrency slot, and queues a
-- follow-up (dependents, batch) for the coordinator when anything waits on it.
-- `f` holds the FINISH_FIELDS of the task from index `o` + 1 on (read here when nil);
-- `rk`, `rv` a field and value to write with the state (e.g. the result), or nil.
local FINISH_FIELDS = {'retention_ms', 'unique_key', 'unique_ttl', 'ckey', 'followup', 'batch'}
local function finish(p, id, tkey, state, now, f, o, rk, rv)
  if not f then f, o = redis.call('HMGET', tkey, unpack(FINISH_FIELDS)), 0 end
  if rk then
    redis.call('HSET', tkey, 'state', state, 'finished_at', now, 'lease_expires', '', rk, rv)
  else
    redis.call('HSET', tkey, 'state', state, 'finished_at', now, 'lease_expires', '')
  end
  zadd_later(k_state_index(p, state), now, id)
  local retention = tonumber(f[o + 1] or '') or DEFAULT_RETENTION_MS
  if retention > 0 then redis.call('PEXPIRE', tkey, retention) end
  if f[o + 2] and not f[o + 3] then
    local ukey = k_unique(p, f[o + 2])
    if redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
  end
  release_slot(p, id, f[o + 4])
  if f[o + 5] == '1' or f[o + 6] then redis.call('RPUSH', k_followups(p), id) end
  stat(p, state)
end

-- Queue limits at dispatch: how many more tasks may start now. Reads `max_running`
-- (assigned + running, from the load hash) and `rate_limit` (a token bucket with a
-- burst of a tenth of a second's worth, at least 1). Returns allowed (nil: no limit),
-- the bucket's tokens (nil: no rate limit) and, when the bucket is empty, the ms until
-- the next token.
local function queue_budget(p, now, conf_max, conf_rate)
  local allowed = nil
  local maxr = tonumber(conf_max or '') or 0
  if maxr > 0 then
    local active = 0
    for _, v in ipairs(redis.call('HVALS', k_load(p))) do active = active + tonumber(v) end
    allowed = math.max(0, maxr - active)
  end
  local rate = tonumber(conf_rate or '') or 0
  local tokens, wait = nil, 0
  if rate > 0 then
    local burst = math.max(1, rate / 10)
    local bk = redis.call('HMGET', k_bucket(p), 'tokens', 'ts')
    tokens = tonumber(bk[1] or '') or burst
    local ts = tonumber(bk[2] or '') or now
    tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
    local whole = math.floor(tokens)
    if allowed == nil or whole < allowed then allowed = whole end
    if whole < 1 then wait = math.ceil((1 - tokens) * 1000 / rate) end
  end
  return allowed, tokens, wait
end

-- Spends `used` tokens of the bucket read by queue_budget.
local function spend_tokens(p, tokens, used, now)
  if tokens then
    redis.call('HSET', k_bucket(p), 'tokens', tostring(tokens - used), 'ts', now)
  end
end

-- Takes a concurrency slot for a task about to be assigned or started; false when the
-- key's slots are all held. `until_ms` is the slot's deadline (the lease's).
local function take_slot(p, id, ckey, climit, until_ms, now)
  local sem = k_semaphore(p, ckey)
  redis.call('ZREMRANGEBYSCORE', sem, '-inf', now)
  if redis.call('ZSCORE', sem, id) then
    redis.call('ZADD', sem, until_ms, id)
    return true
  end
  if redis.call('ZCARD', sem) >= (tonumber(climit) or 1) then return false end
  redis.call('ZADD', sem, until_ms, id)
  return true
end

-- A running task's attempt ended without success (fail, or an expired lease).
-- Returns the new state: cancelled, retrying or failed.
local function fail_attempt(p, id, tkey, now, err, retryable, jitter)
  local h = redis.call('HMGET', tkey, 'attempts', 'max_attempts', 'backoff_initial',
    'backoff_max', 'node', 'cancel_requested', 'ckey')
  local attempts = tonumber(h[1]) or 0
  local max_attempts = tonumber(h[2]) or DEFAULT_MAX_ATTEMPTS
  local node = h[5] or ''
  redis.call('ZREM', k_state_index(p, 'running'), id)
  incr_load(p, node, -1)
  release_slot(p, id, h[7])
  if node ~= '' then redis.call('SREM', k_cancels(p, node), id) end
  redis.call('HSET', tkey, 'error', err)
  local state
  if h[6] == '1' then
    state = 'cancelled'
    finish(p, id, tkey, state, now)
  elseif retryable and attempts < max_attempts then
    state = 'retrying'
    local initial = tonumber(h[3]) or DEFAULT_BACKOFF_INITIAL_MS
    local cap = tonumber(h[4]) or DEFAULT_BACKOFF_MAX_MS
    local delay = math.min(cap, initial * (2 ^ (attempts - 1)))
    -- "Equal jitter": half fixed, half random, so retries of a burst spread out.
    delay = math.floor(delay / 2 + (delay / 2) * jitter)
    redis.call('HSET', tkey, 'state', state, 'run_at', now + delay, 'lease_expires', '')
    redis.call('ZADD', k_state_index(p, 'retrying'), now + delay, id)
    stat(p, 'retried')
  else
    state = 'failed'
    finish(p, id, tkey, state, now)
  end
  emit(p, 'task.' .. state, id, node, state)
  return state
end

-- Batches (keys under the batch's own tag). A batch is complete when it is not held
-- open, no chunk is in flight and every child ended; then its state is fixed
-- (failed when any child failed or was cancelled) and its then task becomes due.
-- Returns {OK, then_due (0/1), state, total, succeeded, failed, cancelled, then JSON}
-- with then_due 1 while the then task is due and not yet recorded as stored.
local function batch_check(p, now)
  local meta = k_batch_meta(p)
  local h = redis.call('HMGET', meta, 'open', 'adding', 'total', 'done', 'succeeded', 'failed',
    'cancelled', 'then', 'then_state', 'finished_at', 'state')
  local total, done = tonumber(h[3]) or 0, tonumber(h[4]) or 0
  local state = h[11] or 'running'
  if not h[10] and h[1] ~= '1' and (tonumber(h[2]) or 0) <= 0 and done >= total then
    state = 'succeeded'
    if (tonumber(h[6]) or 0) + (tonumber(h[7]) or 0) > 0 then state = 'failed' end
    local then_state = ''
    if h[8] and h[8] ~= '' then then_state = 'due' end
    redis.call('HSET', meta, 'state', state, 'finished_at', now, 'then_state', then_state)
    h[9] = then_state
    -- Kept as long as a finished task is by default: 7 days.
    for _, k in ipairs({k_batch_meta(p), k_batch_children(p), k_batch_done(p)}) do
      redis.call('PEXPIRE', k, 604800000)
    end
  end
  local due = 0
  if h[9] == 'due' then due = 1 end
  return {OK, due, state, total, tonumber(h[5]) or 0, tonumber(h[6]) or 0, tonumber(h[7]) or 0,
    h[8] or ''}
end

-- ----- Leases (lease.lua, and dispatch.lua's direct hand-off) -----

-- What a lease reads of a task (HMGET in this order); missing fields read as nil, so a
-- task at its defaults makes no Lua string but its state.
local LEASE_FIELDS = {'state', 'node', 'requires', 'ckey', 'climit', 'timeout_ms', 'fence',
  'attempts'}

-- Starts the lease of task `id` (`ckey`, `timeout_ms`, `fence`, `attempts` as read) for
-- `node`: state running, a new nonce, fence and attempts + 1, the deadline in `running`,
-- the concurrency slot held as long as the lease. Appends the id to `out`: the caller
-- reads the leased hashes after the script (src/store/dispatch.rs), so no hash is
-- converted to Lua and back here.
local function lease_start(p, node, id, tkey, ckey, timeout_ms, fence, attempts, nonce, now, out)
  local timeout = tonumber(timeout_ms) or DEFAULT_TIMEOUT_MS
  local deadline = now + timeout
  -- The concurrency slot (taken at dispatch) now lives as long as the lease.
  if ckey then redis.call('ZADD', k_semaphore(p, ckey), deadline, id) end
  -- Numbers go to redis.call as numbers: Redis writes an integral one with its integer
  -- printer, where tostring() would go through sprintf's floating-point path (the same
  -- digits, several times the cost, four times per lease).
  redis.call('HSET', tkey, 'state', 'running', 'node', node, 'nonce', nonce,
    'started_at', now, 'lease_expires', deadline,
    'fence', (tonumber(fence) or 0) + 1,
    'attempts', (tonumber(attempts) or 0) + 1)
  zadd_later(k_state_index(p, 'running'), deadline, id)
  emit(p, 'task.running', id, node, 'running')
  out[#out + 1] = id
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
-- Returns four values (a reply row, no table: false where a value is absent):
-- {OK, state, run_ms, node} accepted (state succeeded, or cancelled when a
-- cancel was pending); {REPEAT, state} a repeat of the completion already accepted for
-- this very lease (answered like the first, nothing written); {NOT_FOUND} no such task;
-- {CONFLICT, state} stale or foreign token: nothing written.
local function complete_one(p, acc, id, node, fence, nonce, result)
  local tkey = k_task(p, id)
  local h = redis.call('HMGET', tkey, 'state', 'node', 'fence', 'nonce', 'started_at',
    'cancel_requested', 'result', unpack(FINISH_FIELDS))
  if not h[1] then return NOT_FOUND, false, false, false end
  local same_lease = h[3] == fence and h[4] == nonce and (node == '' or h[2] == node)
  -- A completion accepted while a cancel was pending ended the task cancelled (with its
  -- result kept; only a completion writes a result, and retry clears it): a repeat too.
  local completed = h[1] == 'succeeded' or (h[1] == 'cancelled' and h[7] ~= false)
  if completed and same_lease then return REPEAT, h[1], false, false end
  if h[1] ~= 'running' or not same_lease then return CONFLICT, h[1], false, false end
  local now = report_now(acc)
  acc.running[#acc.running + 1] = id
  acc.load[h[2]] = (acc.load[h[2]] or 0) - 1
  local state = 'succeeded'
  if h[6] == '1' then
    state = 'cancelled'
    -- Only a pending cancel puts the id in the node's cancels set.
    redis.call('SREM', k_cancels(p, h[2]), id)
  end
  finish(p, id, tkey, state, now, h, 7, 'result', result)
  emit(p, 'task.' .. state, id, h[2], state)
  report_done(acc, h[2], id)
  return OK, state, now - (tonumber(h[5]) or now), h[2]
end

-- A node reports that its current attempt failed (fail.lua's semantics).
-- Returns four values as complete_one: {OK, state, run_ms, node} with state retrying, failed or cancelled;
-- {REPEAT, state} a repeat for the same lease already recorded; {NOT_FOUND} no such
-- task; {CONFLICT, state} stale or foreign token: nothing written.
local function fail_one(p, acc, id, node, fence, nonce, err, retryable, jitter)
  local tkey = k_task(p, id)
  local h = redis.call('HMGET', tkey, 'state', 'node', 'fence', 'nonce', 'started_at')
  if not h[1] then return NOT_FOUND, false, false, false end
  local same_lease = h[3] == fence and h[4] == nonce and (node == '' or h[2] == node)
  if h[1] ~= 'running' then
    if same_lease and (h[1] == 'retrying' or h[1] == 'failed' or h[1] == 'cancelled') then
      return REPEAT, h[1], false, false
    end
    return CONFLICT, h[1], false, false
  end
  if not same_lease then return CONFLICT, h[1], false, false end
  local now = report_now(acc)
  local state = fail_attempt(p, id, tkey, now, err, retryable, jitter)
  report_done(acc, h[2], id)
  return OK, state, now - (tonumber(h[5]) or now), h[2]
end

-- Writes what a report batch deferred.
local function report_flush(p, channel, acc)
  local r = acc.running
  for i = 1, #r, 1000 do
    redis.call('ZREM', k_state_index(p, 'running'), unpack(r, i, math.min(i + 999, #r)))
  end
  for _, node in ipairs(acc.nodes) do
    if acc.load[node] then incr_load(p, node, acc.load[node]) end
    local ids = acc.done[node]
    for i = 1, #ids, 1000 do
      redis.call('PUBLISH', channel,
        wake_done(p, node, table.concat(ids, ' ', i, math.min(i + 999, #ids))))
    end
  end
end

-- dispatch.lua: assign pending tasks to nodes' inboxes, or lease them at once to a
-- node whose lease long-poll waits in the calling process (the direct hand-off: no
-- inbox, no second script).
-- KEYS[1]: queue prefix
-- ARGV[1]: wake channel   ARGV[2]: most tasks to assign   ARGV[3]: most pending to scan
-- ARGV[4]: a fresh random hex seed; a direct lease's nonce is the seed followed by its
--   index in this call (unguessable, unique per lease)
-- ARGV[5]: node count m, then m records of 4 fields: node id, budget, tags (csv), and
--   how many of its tasks to lease directly (0: all to its inbox), ordered by
--   preference (most free slots, then shortest mean run time). The budget is the
--   node's capacity minus its load in other queues; this queue's load is read here,
--   atomically, so several dispatchers (or replicas) never overfill a node.
-- Limits: the queue's max_running and rate_limit (conf) cap how many go now; a task
-- with a concurrency key goes only when it gets a slot of its key's semaphore (others
-- stay pending, in order, and go when a slot frees: finishing publishes a wake-up).
-- Returns: {assigned, pending left, ms until the rate limit allows the next task (0:
-- not rate-limited), w, then the id of each of the w nodes whose inbox got tasks,
-- then per node that got direct leases: its id, k, and the k task ids leased}.
-- Paused queues assign nothing.
local p, channel, max, scan = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local seed, m = ARGV[4], tonumber(ARGV[5])
local conf = redis.call('HMGET', k_conf(p), 'paused', 'max_running', 'rate_limit')
if conf[1] == '1' then
  return {0, redis.call('ZCARD', k_state_index(p, 'pending')), 0, 0}
end
local now = nil
local allowed, tokens, wait = nil, nil, 0
if conf[2] or conf[3] then
  now = now_ms()
  allowed, tokens, wait = queue_budget(p, now, conf[2], conf[3])
end
local nodes = {}
local total_free = 0
for i = 0, m - 1 do
  local b = 6 + i * 4
  local tags = {}
  for t in string.gmatch(ARGV[b + 2], '[^,]+') do tags[t] = true end
  local free = tonumber(ARGV[b + 1]) - (tonumber(redis.call('HGET', k_load(p), ARGV[b])) or 0)
  if free < 0 then free = 0 end
  nodes[#nodes + 1] = {id = ARGV[b], free = free, tags = tags, ids = {},
    direct = tonumber(ARGV[b + 3]) or 0, rows = {}}
  total_free = total_free + free
end
if total_free < max then max = total_free end
if allowed and allowed < max then max = allowed end
local assigned = 0
local leased = 0
local full = {}
local pending = k_state_index(p, 'pending')
if max > 0 then
  local ids = redis.call('ZRANGE', pending, 0, scan - 1)
  for _, id in ipairs(ids) do
    if assigned >= max then break end
    local tkey = k_task(p, id)
    local t = redis.call('HMGET', tkey, 'state', 'requires', 'ckey', 'climit', 'timeout_ms',
      'fence', 'attempts')
    local requires = t[2] or ''
    if not t[1] then
      -- An index entry without its hash: drop it (doctor would flag it).
      zrem_later(pending, id)
    elseif t[3] and full[t[3]] then
      -- Its key has no free slot: it waits, in order.
    else
      local best = nil
      for _, nd in ipairs(nodes) do
        if nd.free > 0 and (best == nil or nd.free > best.free) then
          local ok = true
          for tg in string.gmatch(requires, '[^,]+') do
            if not nd.tags[tg] then ok = false break end
          end
          if ok then best = nd end
        end
      end
      if best and t[3] then
        now = now or now_ms()
        -- Until the lease starts, the slot is held for the lease TTL plus a minute (an
        -- inbox of a vanished node is requeued, which frees it, well before).
        local ttl = tonumber(t[5]) or DEFAULT_TIMEOUT_MS
        if not take_slot(p, id, t[3], t[4], now + ttl + 60000, now) then
          full[t[3]] = true
          best = nil
        end
      end
      if best then
        zrem_later(pending, id)
        emit(p, 'task.assigned', id, best.id, 'assigned')
        if #best.rows < best.direct then
          now = now or now_ms()
          leased = leased + 1
          lease_start(p, best.id, id, tkey, t[3], t[5], t[6], t[7],
            seed .. string.format('%04x', leased), now, best.rows)
        else
          best.ids[#best.ids + 1] = id
          redis.call('HSET', tkey, 'state', 'assigned', 'node', best.id)
        end
        best.free = best.free - 1
        assigned = assigned + 1
      end
    end
  end
end
-- One RPUSH, one load change and one wake-up per node that got tasks in its inbox.
local woken = {}
for _, nd in ipairs(nodes) do
  local got = #nd.ids
  if got > 0 then
    woken[#woken + 1] = nd.id
    local inbox = k_inbox(p, nd.id)
    for i = 1, got, 1000 do redis.call('RPUSH', inbox, unpack(nd.ids, i, math.min(i + 999, got))) end
    redis.call('PUBLISH', channel, wake_assigned(p, nd.id))
  end
  incr_load(p, nd.id, got + #nd.rows)
end
spend_tokens(p, tokens, assigned, now)
if tokens and assigned > 0 and wait == 0 then
  -- Spent down to under one token: the next one comes in this many ms.
  local left = tokens - assigned
  local rate = tonumber(conf[3])
  if left < 1 then wait = math.ceil((1 - left) * 1000 / rate) end
end
flush_all()
local reply = {assigned, redis.call('ZCARD', pending), wait, #woken}
for _, id in ipairs(woken) do reply[#reply + 1] = id end
for _, nd in ipairs(nodes) do
  if #nd.rows > 0 then
    reply[#reply + 1] = nd.id
    reply[#reply + 1] = #nd.rows
    for _, row in ipairs(nd.rows) do reply[#reply + 1] = row end
  end
end
return reply

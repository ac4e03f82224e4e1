-- lease.lua: a node takes tasks from its inbox (or, for pull nodes, from pending).
-- KEYS[1]: queue prefix
-- ARGV[1]: wake channel   ARGV[2]: node id   ARGV[3]: most tasks
-- ARGV[4]: "1" when the node also pulls from pending itself (human nodes), "m" when a
--   machine node does (its report call asks for its next tasks: never from a
--   human-only queue), else "0"
-- ARGV[5]: the node's tags (csv, for pull)   ARGV[6]: a fresh random hex seed; each
--   lease's nonce is the seed followed by its index (unguessable, unique per lease)
-- Returns: the ids of the tasks leased (state running, fence and attempts incremented,
-- a new nonce, lease_expires = now + timeout_ms); the caller reads their hashes.
-- Per task: one HMGET and one HSET; the inbox pop and the running index are one
-- command per call.
local p, node, max, pull = KEYS[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] ~= '0'
local now = now_ms()
local out = {}
local seed = ARGV[6]

local inbox = k_inbox(p, node)
while #out < max do
  local ids = redis.call('LPOP', inbox, max - #out)
  if not ids then break end
  for _, id in ipairs(ids) do
    local tkey = k_task(p, id)
    local h = redis.call('HMGET', tkey, unpack(LEASE_FIELDS))
    -- Entries whose task moved on (cancelled, requeued) are dropped.
    if h[1] == 'assigned' and h[2] == node then
      lease_start(p, node, id, tkey, h[4], h[6], h[7], h[8],
        seed .. string.format('%04x', #out), now, out)
    end
  end
end
local conf = pull and redis.call('HMGET', k_conf(p), 'paused', 'max_running', 'rate_limit',
  'human_only')
if pull and #out < max and conf[1] ~= '1' and not (ARGV[4] == 'm' and conf[4] == '1') then
  -- People (and a busy node's report call) pull from pending themselves, under the same
  -- limits as dispatch.
  local allowed, tokens = queue_budget(p, now, conf[2], conf[3])
  local room = max - #out
  if allowed and allowed < room then room = allowed end
  local taken = 0
  local tags = nil
  local pending = k_state_index(p, 'pending')
  -- At most max(100, room) pending tasks are looked at, read `room` at a time (most
  -- calls take the first `room`).
  local limit = math.max(100, room)
  local seen = 0
  while taken < room and seen < limit do
    local want = math.min(room - taken, limit - seen)
    local ids = redis.call('ZRANGE', pending, seen, seen + want - 1)
    seen = seen + want
    for _, id in ipairs(ids) do
      local tkey = k_task(p, id)
      local h = redis.call('HMGET', tkey, unpack(LEASE_FIELDS))
      local requires, ckey, timeout = h[3], h[4], h[6]
      local ok = h[1] ~= false
      if not ok then
        -- An index entry without its hash: drop it, as dispatch does (never start a ghost).
        zrem_later(pending, id)
      end
      if ok and requires then
        if not tags then
          tags = {}
          for tg in string.gmatch(ARGV[5], '[^,]+') do tags[tg] = true end
        end
        for tg in string.gmatch(requires, '[^,]+') do
          if not tags[tg] then ok = false break end
        end
      end
      if ok and ckey then
        ok = take_slot(p, id, ckey, h[5], now + (tonumber(timeout) or DEFAULT_TIMEOUT_MS), now)
      end
      if ok then
        zrem_later(pending, id)
        -- Assigned and started in one step, as dispatch's direct hand-off: both events.
        emit(p, 'task.assigned', id, node, 'assigned')
        lease_start(p, node, id, tkey, ckey, timeout, h[7], h[8],
          seed .. string.format('%04x', #out), now, out)
        taken = taken + 1
      end
    end
    if #ids < want then break end
  end
  incr_load(p, node, taken)
  spend_tokens(p, tokens, taken, now)
end
return out

-- lease.lua: a node takes tasks from its inbox (or, for pull nodes, from pending).
-- KEYS[1]: queue prefix
-- ARGV[1]: wake channel   ARGV[2]: node id   ARGV[3]: most tasks
-- ARGV[4]: "1" when the node also pulls from pending itself (human nodes), "m" when a
--   machine node does (its report call asks for its next tasks: never from a
--   human-only queue), else "0"
-- ARGV[5]: the node's tags (csv, for pull)   ARGV[6]: a fresh random hex seed; each
--   lease's nonce is the seed followed by its index (unguessable, unique per lease)
-- Returns: a list of task records, each a flat field/value array of the task hash as
-- written here (state running, fence and attempts incremented, a new nonce,
-- lease_expires = now + timeout_ms) with the field 'id' added.
-- Per task: one HGETALL and one HSET; the inbox pop and the running index are one
-- command per call.
local p, node, max, pull = KEYS[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] ~= '0'
local now = now_ms()
local out = {}

local function start(id, tkey, h)
  lease_start(p, node, id, tkey, h, ARGV[6] .. string.format('%04x', #out), now, out)
end

local inbox = k_inbox(p, node)
while #out < max do
  local ids = redis.call('LPOP', inbox, max - #out)
  if not ids then break end
  for _, id in ipairs(ids) do
    local tkey = k_task(p, id)
    local h = as_map(redis.call('HGETALL', tkey))
    -- Entries whose task moved on (cancelled, requeued) are dropped.
    if h.state == 'assigned' and h.node == node then start(id, tkey, h) end
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
  local tags = {}
  for tg in string.gmatch(ARGV[5], '[^,]+') do tags[tg] = true end
  local ids = redis.call('ZRANGE', k_state_index(p, 'pending'), 0, math.max(100, room) - 1)
  for _, id in ipairs(ids) do
    if taken >= room then break end
    local tkey = k_task(p, id)
    local h = as_map(redis.call('HGETALL', tkey))
    local ok = h.state ~= nil
    if not ok then
      -- An index entry without its hash: drop it, as dispatch does (never start a ghost).
      zrem_later(k_state_index(p, 'pending'), id)
    end
    for tg in string.gmatch(h.requires or '', '[^,]+') do
      if not tags[tg] then ok = false break end
    end
    if ok and h.ckey then
      ok = take_slot(p, id, h.ckey, h.climit, now + (tonumber(h.timeout_ms) or DEFAULT_TIMEOUT_MS), now)
    end
    if ok then
      zrem_later(k_state_index(p, 'pending'), id)
      incr_load(p, node, 1)
      -- Assigned and started in one step, as dispatch's direct hand-off: both events.
      emit(p, 'task.assigned', id, node, 'assigned')
      start(id, tkey, h)
      taken = taken + 1
    end
  end
  spend_tokens(p, tokens, taken, now)
end
return out

-- lease.lua: a node takes tasks from its inbox (or, for pull nodes, from pending).
-- KEYS[1]: queue prefix
-- ARGV[1]: wake channel   ARGV[2]: node id   ARGV[3]: most tasks
-- ARGV[4]: "1" when the node pulls from pending itself (human nodes), else "0"
-- ARGV[5]: the node's tags (csv, for pull)   ARGV[6]: a fresh random hex seed; each
--   lease's nonce is the seed followed by its index (unguessable, unique per lease)
-- Returns: a list of task records, each a flat HGETALL array, state running with
-- fence incremented, a new nonce and lease_expires = now + timeout_ms.
local p, node, max, pull = KEYS[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local now = now_ms()
local out = {}
local function start(id)
  local tkey = k_task(p, id)
  local t = redis.call('HMGET', tkey, 'timeout_ms', 'ckey')
  local timeout = tonumber(t[1]) or 30000
  -- The concurrency slot (taken at dispatch) now lives as long as the lease.
  if t[2] then redis.call('ZADD', k_semaphore(p, t[2]), now + timeout, id) end
  local fence = redis.call('HINCRBY', tkey, 'fence', 1)
  redis.call('HINCRBY', tkey, 'attempts', 1)
  redis.call('HSET', tkey, 'state', 'running', 'node', node, 'nonce', ARGV[6] .. string.format('%04x', #out),
    'started_at', now, 'lease_expires', now + timeout)
  redis.call('ZADD', k_state_index(p, 'running'), now + timeout, id)
  emit(p, 'task.running', id, node, 'running')
  out[#out + 1] = redis.call('HGETALL', tkey)
end
while #out < max do
  local id = redis.call('LPOP', k_inbox(p, node))
  if not id then break end
  local h = redis.call('HMGET', k_task(p, id), 'state', 'node')
  -- Entries whose task moved on (cancelled, requeued) are dropped.
  if h[1] == 'assigned' and h[2] == node then start(id) end
end
local conf = pull and redis.call('HMGET', k_conf(p), 'paused', 'max_running', 'rate_limit')
if pull and #out < max and conf[1] ~= '1' then
  -- People pull from pending themselves, under the same limits as dispatch.
  local allowed, tokens = queue_budget(p, now, conf[2], conf[3])
  local room = max - #out
  if allowed and allowed < room then room = allowed end
  local taken = 0
  local tags = {}
  for tg in string.gmatch(ARGV[5], '[^,]+') do tags[tg] = true end
  local ids = redis.call('ZRANGE', k_state_index(p, 'pending'), 0, 99)
  for _, id in ipairs(ids) do
    if taken >= room then break end
    local h = redis.call('HMGET', k_task(p, id), 'requires', 'ckey', 'climit', 'timeout_ms')
    local requires = h[1]
    local ok = requires ~= false
    if not ok then
      -- An index entry without its hash: drop it, as dispatch does (never start a ghost).
      redis.call('ZREM', k_state_index(p, 'pending'), id)
      requires = ''
    end
    for tg in string.gmatch(requires, '[^,]+') do
      if not tags[tg] then ok = false break end
    end
    if ok and h[2] then
      ok = take_slot(p, id, h[2], h[3], now + (tonumber(h[4]) or 30000), now)
    end
    if ok then
      redis.call('ZREM', k_state_index(p, 'pending'), id)
      incr_load(p, node, 1)
      start(id)
      taken = taken + 1
    end
  end
  spend_tokens(p, tokens, taken, now)
end
return out

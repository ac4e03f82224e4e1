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
  local tkey = p .. 't:' .. id
  local timeout = tonumber(redis.call('HGET', tkey, 'timeout_ms')) or 30000
  local fence = redis.call('HINCRBY', tkey, 'fence', 1)
  redis.call('HINCRBY', tkey, 'attempts', 1)
  redis.call('HSET', tkey, 'state', 'running', 'node', node, 'nonce', ARGV[6] .. string.format('%04x', #out),
    'started_at', now, 'lease_expires', now + timeout)
  redis.call('ZADD', p .. 'running', now + timeout, id)
  emit(p, 'task.running', id, node, 'running')
  out[#out + 1] = redis.call('HGETALL', tkey)
end
while #out < max do
  local id = redis.call('LPOP', p .. 'inbox:' .. node)
  if not id then break end
  local h = redis.call('HMGET', p .. 't:' .. id, 'state', 'node')
  -- Entries whose task moved on (cancelled, requeued) are dropped.
  if h[1] == 'assigned' and h[2] == node then start(id) end
end
if pull and #out < max and redis.call('HGET', p .. 'conf', 'paused') ~= '1' then
  local tags = {}
  for t in string.gmatch(ARGV[5], '[^,]+') do tags[t] = true end
  local ids = redis.call('ZRANGE', p .. 'pending', 0, 99)
  for _, id in ipairs(ids) do
    if #out >= max then break end
    local requires = redis.call('HGET', p .. 't:' .. id, 'requires')
    local ok = requires ~= false
    if not ok then
      -- An index entry without its hash: drop it, as dispatch does (never start a ghost).
      redis.call('ZREM', p .. 'pending', id)
      requires = ''
    end
    for t in string.gmatch(requires, '[^,]+') do
      if not tags[t] then ok = false break end
    end
    if ok then
      redis.call('ZREM', p .. 'pending', id)
      incr_load(p, node, 1)
      start(id)
    end
  end
end
return out

-- expire.lua: leases past their deadline count as failed attempts (node crashed or hung).
-- KEYS[1]: queue prefix
-- ARGV[1]: wake channel   ARGV[2]: most tasks   ARGV[3]: jitter seed in [0, 1)
-- Returns: a flat list {id, node, new state, ...} of the expired tasks.
local p, channel, limit, seed = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]) or 0.5
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', k_state_index(p, 'running'), '-inf', now, 'LIMIT', 0, limit)
local out = {}
for i, id in ipairs(ids) do
  local tkey = k_task(p, id)
  local node = redis.call('HGET', tkey, 'node') or ''
  if redis.call('HGET', tkey, 'state') == 'running' then
    -- Golden-ratio steps spread one seed into distinct jitters.
    local jitter = (seed + i * 0.6180339887) % 1
    local state = fail_attempt(p, id, tkey, now, 'lease expired', true, jitter)
    out[#out + 1] = id
    out[#out + 1] = node
    out[#out + 1] = state
    redis.call('PUBLISH', channel, wake_done(p, node, id))
  else
    redis.call('ZREM', k_state_index(p, 'running'), id)
  end
end
return out

-- dispatch.lua: assign pending tasks to nodes' inboxes.
-- KEYS[1]: queue prefix
-- ARGV[1]: wake channel   ARGV[2]: most tasks to assign   ARGV[3]: most pending to scan
-- ARGV[4]: node count m, then m records of 3 fields: node id, budget, tags (csv),
--   ordered by preference (most free slots, then shortest mean run time). The budget is
--   the node's capacity minus its load in other queues; this queue's load is read here,
--   atomically, so several dispatchers (or replicas) never overfill a node.
-- Returns: {assigned, pending left}. Paused queues assign nothing.
local p, channel, max, scan, m = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('HGET', p .. 'conf', 'paused') == '1' then
  return {0, redis.call('ZCARD', p .. 'pending')}
end
local nodes = {}
local total_free = 0
for i = 0, m - 1 do
  local b = 5 + i * 3
  local tags = {}
  for t in string.gmatch(ARGV[b + 2], '[^,]+') do tags[t] = true end
  local free = tonumber(ARGV[b + 1]) - (tonumber(redis.call('HGET', p .. 'load', ARGV[b])) or 0)
  if free < 0 then free = 0 end
  nodes[#nodes + 1] = {id = ARGV[b], free = free, tags = tags, got = 0}
  total_free = total_free + free
end
if total_free < max then max = total_free end
local assigned = 0
if max > 0 then
  local ids = redis.call('ZRANGE', p .. 'pending', 0, scan - 1)
  for _, id in ipairs(ids) do
    if assigned >= max then break end
    local tkey = p .. 't:' .. id
    local requires = redis.call('HGET', tkey, 'requires')
    if not requires then
      -- An index entry without its hash: drop it (doctor would flag it).
      redis.call('ZREM', p .. 'pending', id)
    else
      local best = nil
      for _, nd in ipairs(nodes) do
        if nd.free > 0 and (best == nil or nd.free > best.free) then
          local ok = true
          for t in string.gmatch(requires, '[^,]+') do
            if not nd.tags[t] then ok = false break end
          end
          if ok then best = nd end
        end
      end
      if best then
        redis.call('ZREM', p .. 'pending', id)
        redis.call('RPUSH', p .. 'inbox:' .. best.id, id)
        redis.call('HSET', tkey, 'state', 'assigned', 'node', best.id)
        incr_load(p, best.id, 1)
        emit(p, 'task.assigned', id, best.id, 'assigned')
        best.free = best.free - 1
        best.got = best.got + 1
        assigned = assigned + 1
      end
    end
  end
end
for _, nd in ipairs(nodes) do
  if nd.got > 0 then redis.call('PUBLISH', channel, 'assigned ' .. p .. ' ' .. nd.id) end
end
return {assigned, redis.call('ZCARD', p .. 'pending')}

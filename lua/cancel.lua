-- cancel.lua: cancel a task. Waiting tasks are cancelled at once; a running one is
-- marked and its node told at its next heartbeat (it ends when the node reports or
-- its lease expires).
-- KEYS[1]: queue prefix   ARGV[1]: wake channel   ARGV[2]: task id
-- Returns: {0, "cancelled"} done; {0, "requested"} running, node told;
-- {1} no such task; {2, state} already succeeded or failed.
local p, channel, id = KEYS[1], ARGV[1], ARGV[2]
local tkey = p .. 't:' .. id
local h = redis.call('HMGET', tkey, 'state', 'node')
local state, node = h[1], h[2] or ''
if not state then return {1} end
if state == 'cancelled' then return {0, 'cancelled'} end
if state == 'succeeded' or state == 'failed' then return {2, state} end
if state == 'running' then
  redis.call('HSET', tkey, 'cancel_requested', 1)
  redis.call('SADD', p .. 'cancels:' .. node, id)
  emit(p, 'task.cancel_requested', id, node, state)
  return {0, 'requested'}
end
local now = now_ms()
if state == 'assigned' then
  redis.call('LREM', p .. 'inbox:' .. node, 0, id)
  incr_load(p, node, -1)
else
  redis.call('ZREM', p .. state, id)
end
finish(p, id, tkey, 'cancelled', now)
emit(p, 'task.cancelled', id, node, 'cancelled')
redis.call('PUBLISH', channel, 'done ' .. p .. ' ' .. node .. ' ' .. id)
return {0, 'cancelled'}

-- cancel.lua: cancel a task. Waiting tasks are cancelled at once; a running one is
-- marked and its node told at its next heartbeat (it ends when the node reports or
-- its lease expires).
-- KEYS[1]: queue prefix   ARGV[1]: wake channel   ARGV[2]: task id
-- Returns: {OK, "cancelled"} done; {OK, "requested"} running, node told;
-- {NOT_FOUND} no such task; {CONFLICT, state} already succeeded or failed.
local p, channel, id = KEYS[1], ARGV[1], ARGV[2]
local tkey = k_task(p, id)
local h = redis.call('HMGET', tkey, 'state', 'node')
local state, node = h[1], h[2] or ''
if not state then return {NOT_FOUND} end
if state == 'cancelled' then return {OK, 'cancelled'} end
if state == 'succeeded' or state == 'failed' then return {CONFLICT, state} end
if state == 'running' then
  redis.call('HSET', tkey, 'cancel_requested', 1)
  redis.call('SADD', k_cancels(p, node), id)
  emit(p, 'task.cancel_requested', id, node, state)
  return {OK, 'requested'}
end
local now = now_ms()
if state == 'assigned' then
  redis.call('LREM', k_inbox(p, node), 0, id)
  incr_load(p, node, -1)
else
  redis.call('ZREM', k_state_index(p, state), id)
end
finish(p, id, tkey, 'cancelled', now)
emit(p, 'task.cancelled', id, node, 'cancelled')
redis.call('PUBLISH', channel, wake_done(p, node, id))
return {OK, 'cancelled'}

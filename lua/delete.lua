-- delete.lua: delete a finished task (succeeded, failed or cancelled).
-- KEYS[1]: queue prefix   ARGV[1]: task id
-- Returns: {OK} deleted; {NOT_FOUND} no such task; {CONFLICT, state} not finished.
local p, id = KEYS[1], ARGV[1]
local tkey = k_task(p, id)
local state = redis.call('HGET', tkey, 'state')
if not state then return {NOT_FOUND} end
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then return {CONFLICT, state} end
redis.call('ZREM', k_state_index(p, state), id)
redis.call('DEL', tkey)
emit(p, 'task.deleted', id, '', state)
return {OK}

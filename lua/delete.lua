-- delete.lua: delete a finished task (succeeded, failed or cancelled).
-- KEYS[1]: queue prefix   ARGV[1]: task id
-- Returns: {0} deleted; {1} no such task; {2, state} not finished.
local p, id = KEYS[1], ARGV[1]
local tkey = p .. 't:' .. id
local state = redis.call('HGET', tkey, 'state')
if not state then return {1} end
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then return {2, state} end
redis.call('ZREM', p .. state, id)
redis.call('DEL', tkey)
emit(p, 'task.deleted', id, '', state)
return {0}

-- dep_register.lua: a blocked task waits on one of its dependencies.
-- KEYS[1]: the dependency's queue prefix
-- ARGV[1]: dependency id   ARGV[2]: the blocked task's id
-- Returns: {0} registered: the dependency's end queues a follow-up that resolves it;
-- {1} no such dependency (deleted or expired); {2, state} already terminal: the caller
-- resolves it now.
local p, dep, waiter = KEYS[1], ARGV[1], ARGV[2]
local tkey = p .. 't:' .. dep
local state = redis.call('HGET', tkey, 'state')
if not state then return {1} end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return {2, state} end
redis.call('SADD', p .. 'dependents:' .. dep, waiter)
redis.call('HSET', tkey, 'followup', 1)
return {0}

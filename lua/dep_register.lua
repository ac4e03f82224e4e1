-- dep_register.lua: a blocked task waits on one of its dependencies.
-- KEYS[1]: the dependency's queue prefix
-- ARGV[1]: dependency id   ARGV[2]: the blocked task's id
-- Returns: {OK} registered: the dependency's end queues a follow-up that resolves it;
-- {NOT_FOUND} no such dependency (deleted or expired); {CONFLICT, state} already
-- terminal: the caller resolves it now.
local p, dep, waiter = KEYS[1], ARGV[1], ARGV[2]
local tkey = k_task(p, dep)
local state = redis.call('HGET', tkey, 'state')
if not state then return {NOT_FOUND} end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return {CONFLICT, state} end
redis.call('SADD', k_dependents(p, dep), waiter)
redis.call('HSET', tkey, 'followup', 1)
return {OK}

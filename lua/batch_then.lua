-- batch_then.lua: the batch's then task was stored (idempotency key: exactly once).
-- KEYS[1]: batch prefix   ARGV[1]: then task id
-- Returns: {0}.
local p = KEYS[1]
if redis.call('EXISTS', p .. 'meta') == 0 then return {0} end
redis.call('HSET', p .. 'meta', 'then_state', 'fired', 'then_id', ARGV[1])
return {0}

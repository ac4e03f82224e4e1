-- batch_then.lua: the batch's then task was stored (idempotency key: exactly once).
-- KEYS[1]: batch prefix   ARGV[1]: then task id
-- Returns: {OK}.
local p = KEYS[1]
if redis.call('EXISTS', k_batch_meta(p)) == 0 then return {OK} end
redis.call('HSET', k_batch_meta(p), 'then_state', 'fired', 'then_id', ARGV[1])
return {OK}

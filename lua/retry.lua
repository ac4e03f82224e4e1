-- retry.lua: an operator sends a failed or cancelled task back to pending, attempts reset.
-- KEYS[1]: queue prefix   ARGV[1]: wake channel   ARGV[2]: task id
-- Returns: {OK} done; {NOT_FOUND} no such task; {CONFLICT, state} not failed or
-- cancelled.
local p, channel, id = KEYS[1], ARGV[1], ARGV[2]
local tkey = k_task(p, id)
local state = redis.call('HGET', tkey, 'state')
if not state then return {NOT_FOUND} end
if state ~= 'failed' and state ~= 'cancelled' then return {CONFLICT, state} end
redis.call('ZREM', k_state_index(p, state), id)
redis.call('PERSIST', tkey)
local seq = redis.call('INCR', k_seq(p))
local priority = tonumber(redis.call('HGET', tkey, 'priority')) or 0
redis.call('HSET', tkey, 'state', 'pending', 'attempts', 0, 'cancel_requested', 0)
redis.call('HDEL', tkey, 'finished_at', 'error', 'result', 'progress')
redis.call('ZADD', k_state_index(p, 'pending'), pending_score(priority, seq), id)
emit(p, 'task.retried', id, '', 'pending')
redis.call('PUBLISH', channel, wake_new(p))
return {OK}

-- retry.lua: an operator sends a failed or cancelled task back to pending, attempts reset.
-- KEYS[1]: queue prefix   ARGV[1]: wake channel   ARGV[2]: task id
-- Returns: {0} done; {1} no such task; {2, state} not failed or cancelled.
local p, channel, id = KEYS[1], ARGV[1], ARGV[2]
local tkey = p .. 't:' .. id
local state = redis.call('HGET', tkey, 'state')
if not state then return {1} end
if state ~= 'failed' and state ~= 'cancelled' then return {2, state} end
redis.call('ZREM', p .. state, id)
redis.call('PERSIST', tkey)
local seq = redis.call('INCR', p .. 'seq')
local priority = tonumber(redis.call('HGET', tkey, 'priority')) or 0
redis.call('HSET', tkey, 'state', 'pending', 'attempts', 0, 'seq', seq, 'cancel_requested', 0)
redis.call('HDEL', tkey, 'finished_at', 'error', 'result', 'progress')
redis.call('ZADD', p .. 'pending', pending_score(priority, seq), id)
emit(p, 'task.retried', id, '', 'pending')
redis.call('PUBLISH', channel, 'new ' .. p)
return {0}

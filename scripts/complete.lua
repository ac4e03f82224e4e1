-- complete.lua: accept a node's result for its current lease.
-- KEYS[1]: queue prefix
-- ARGV[1]: wake channel   ARGV[2]: task id   ARGV[3]: node id ("" = any: admin)
-- ARGV[4]: fence   ARGV[5]: nonce   ARGV[6]: result JSON
-- Returns: {0, state, run_ms, node} accepted (state succeeded, or cancelled when a
-- cancel was pending); {3, state} a repeat of the completion already accepted for this
-- very lease (answered like the first, nothing written); {1} no such task;
-- {2, state} stale or foreign token: nothing written.
local p, channel, id, node, fence, nonce = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tkey = p .. 't:' .. id
local h = redis.call('HMGET', tkey, 'state', 'node', 'fence', 'nonce', 'started_at', 'cancel_requested',
  'result')
if not h[1] then return {1} end
local same_lease = h[3] == fence and h[4] == nonce and (node == '' or h[2] == node)
-- A completion accepted while a cancel was pending ended the task cancelled (with its
-- result kept; only a completion writes a result, and retry clears it): a repeat too.
local completed = h[1] == 'succeeded' or (h[1] == 'cancelled' and h[7] ~= false)
if completed and same_lease then return {3, h[1]} end
if h[1] ~= 'running' or not same_lease then return {2, h[1]} end
local now = now_ms()
redis.call('ZREM', p .. 'running', id)
incr_load(p, h[2], -1)
redis.call('SREM', p .. 'cancels:' .. h[2], id)
local state = 'succeeded'
if h[6] == '1' then state = 'cancelled' end
redis.call('HSET', tkey, 'result', ARGV[6])
finish(p, id, tkey, state, now)
emit(p, 'task.' .. state, id, h[2], state)
redis.call('PUBLISH', channel, 'done ' .. p .. ' ' .. h[2] .. ' ' .. id)
return {0, state, now - (tonumber(h[5]) or now), h[2]}

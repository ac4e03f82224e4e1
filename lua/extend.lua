-- extend.lua: renew a running task's lease, optionally recording progress.
-- KEYS[1]: queue prefix
-- ARGV[1]: task id   ARGV[2]: node id ("" = any: admin)   ARGV[3]: fence   ARGV[4]: nonce
-- ARGV[5]: progress JSON or "" (unchanged)
-- Returns: {OK, lease_expires, cancel_requested (0/1)}; {NOT_FOUND} no such task;
-- {CONFLICT, state} the token is not the current lease (stale, another node's, or past
-- its deadline).
local p, id, node, fence, nonce = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local tkey = k_task(p, id)
local h = redis.call('HMGET', tkey, 'state', 'node', 'fence', 'nonce', 'timeout_ms', 'cancel_requested',
  'ckey', 'lease_expires')
if not h[1] then return {NOT_FOUND} end
if h[1] ~= 'running' or h[3] ~= fence or h[4] ~= nonce or (node ~= '' and h[2] ~= node) then
  return {CONFLICT, h[1]}
end
local now = now_ms()
-- A lease past its deadline is over, even before the timers notice: renewing it would
-- revive a concurrency slot someone else may hold by now.
if (tonumber(h[8]) or now) < now then return {CONFLICT, h[1]} end
local expires = now + (tonumber(h[5]) or 30000)
redis.call('HSET', tkey, 'lease_expires', expires)
if ARGV[5] ~= '' then
  redis.call('HSET', tkey, 'progress', ARGV[5])
  emit(p, 'task.progress', id, h[2], 'running')
end
redis.call('ZADD', k_state_index(p, 'running'), expires, id)
-- The concurrency slot lives as long as the lease.
if h[7] then redis.call('ZADD', k_semaphore(p, h[7]), expires, id) end
local cancel = 0
if h[6] == '1' then cancel = 1 end
return {OK, expires, cancel}

-- fail.lua: a node reports that its current attempt failed.
-- KEYS[1]: queue prefix
-- ARGV[1]: wake channel   ARGV[2]: task id   ARGV[3]: node id ("" = any: admin)
-- ARGV[4]: fence   ARGV[5]: nonce   ARGV[6]: error text   ARGV[7]: "1" retryable
-- ARGV[8]: jitter in [0, 1)
-- Returns: {0, state, run_ms, node} with state retrying, failed or cancelled;
-- {3, state} a repeat for the same lease already recorded; {1} no such task;
-- {2, state} stale or foreign token: nothing written.
local p, channel, id, node, fence, nonce = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tkey = p .. 't:' .. id
local h = redis.call('HMGET', tkey, 'state', 'node', 'fence', 'nonce', 'started_at')
if not h[1] then return {1} end
local same_lease = h[3] == fence and h[4] == nonce and (node == '' or h[2] == node)
if h[1] ~= 'running' then
  if same_lease and (h[1] == 'retrying' or h[1] == 'failed' or h[1] == 'cancelled') then
    return {3, h[1]}
  end
  return {2, h[1]}
end
if not same_lease then return {2, h[1]} end
local now = now_ms()
local state = fail_attempt(p, id, tkey, now, ARGV[6], ARGV[7] == '1', tonumber(ARGV[8]) or 0.5)
redis.call('PUBLISH', channel, 'done ' .. p .. ' ' .. h[2] .. ' ' .. id)
return {0, state, now - (tonumber(h[5]) or now), h[2]}

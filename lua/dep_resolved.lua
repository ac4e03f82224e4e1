-- dep_resolved.lua: one dependency of a blocked task ended (idempotent: each
-- dependency counts once). With every dependency done the task becomes pending (or
-- scheduled, if its run_at is later); a failed or cancelled dependency makes it follow
-- its on_dep_fail: fail, cancel, or run (counts as done).
-- KEYS[1]: the blocked task's queue prefix
-- ARGV[1]: wake channel   ARGV[2]: task id   ARGV[3]: dependency id
-- ARGV[4]: the dependency's end: succeeded, failed, cancelled, missing; or
--   "registered": every dependency is registered (marks the task, nothing else)
-- Returns: {OK, state} the task's state afterwards; {NOT_FOUND} no such task.
local p, channel, id, dep, dstate = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local tkey = k_task(p, id)
local h = redis.call('HMGET', tkey, 'state', 'on_dep_fail', 'run_at', 'priority')
if not h[1] then return {NOT_FOUND} end
if h[1] ~= 'blocked' then return {OK, h[1]} end
if dstate == 'registered' then
  redis.call('HSET', tkey, 'registered', 1)
  return {OK, h[1]}
end
if redis.call('SADD', k_dep_done(p, id), dep) == 0 then return {OK, h[1]} end
local now = now_ms()
local state
if dstate == 'succeeded' or h[2] == 'run' then
  if redis.call('HINCRBY', tkey, 'deps_left', -1) > 0 then return {OK, h[1]} end
  redis.call('ZREM', k_state_index(p, 'blocked'), id)
  local run_at = tonumber(h[3]) or now
  if run_at > now then
    state = 'scheduled'
    redis.call('HSET', tkey, 'state', state)
    redis.call('ZADD', k_state_index(p, 'scheduled'), run_at, id)
  else
    state = 'pending'
    local seq = redis.call('INCR', k_seq(p))
    redis.call('HSET', tkey, 'state', state)
    redis.call('ZADD', k_state_index(p, 'pending'), pending_score(tonumber(h[4]) or 0, seq), id)
    redis.call('PUBLISH', channel, wake_new(p))
  end
else
  redis.call('ZREM', k_state_index(p, 'blocked'), id)
  state = 'failed'
  if h[2] == 'cancel' then state = 'cancelled' end
  redis.call('HSET', tkey, 'error', 'dependency ' .. dep .. ' ended ' .. dstate)
  finish(p, id, tkey, state, now)
  redis.call('PUBLISH', channel, wake_done(p, '', id))
end
redis.call('DEL', k_dep_done(p, id))
emit(p, 'task.' .. state, id, '', state)
return {OK, state}

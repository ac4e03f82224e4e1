-- sched_fire.lua: decide one tick of a schedule, for the current leader only. A fire
-- is recorded here first (cursor, history, `pending` = "<tick>|<task id>") and the task
-- is submitted after, with the per-tick idempotency key; a leader that dies between
-- the two leaves `pending`, which the next leader completes with the same task id.
-- KEYS[1]: leader "<ns>:{~sched}:leader"  KEYS[2]: schedule hash  KEYS[3]: its fires list
-- ARGV[1]: leader token  ARGV[2]: tick ms  ARGV[3]: outcome fired|skipped|missed|error
-- ARGV[4]: task id or ""  ARGV[5]: error or ""  ARGV[6]: earlier ticks missed (count)
-- ARGV[7]: fires kept
-- Returns: {OK, now} recorded; {NOT_LEADER} not the leader; {NOT_FOUND} no such schedule;
-- {REPEAT} tick already handled; {CONFLICT} another fire is pending (complete it first).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {NOT_LEADER} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {NOT_FOUND} end
local tick, outcome, task = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local h = redis.call('HMGET', KEYS[2], 'cursor', 'pending')
if tick <= (tonumber(h[1]) or 0) then return {REPEAT} end
if h[2] and h[2] ~= '' then return {CONFLICT} end
local now = now_ms()
redis.call('HSET', KEYS[2], 'cursor', tick)
local missed = tonumber(ARGV[6]) or 0
if outcome == 'fired' then
  redis.call('HSET', KEYS[2], 'pending', tick .. '|' .. task, 'last_task', task,
    'last_tick', tick)
  redis.call('HINCRBY', KEYS[2], 'fired', 1)
elseif outcome == 'skipped' then
  redis.call('HINCRBY', KEYS[2], 'skipped', 1)
elseif outcome == 'missed' then
  missed = missed + 1
end
if missed > 0 then redis.call('HINCRBY', KEYS[2], 'missed', missed) end
redis.call('LPUSH', KEYS[3], cjson.encode({tick = tick, at = now, outcome = outcome,
  task = task, error = ARGV[5]}))
redis.call('LTRIM', KEYS[3], 0, (tonumber(ARGV[7]) or 100) - 1)
return {OK, now}

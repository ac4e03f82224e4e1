-- sched_create.lua: store a new cron schedule; its first tick is the first after now.
-- KEYS[1]: schedule hash "<ns>:{~sched}:s:<name>"   KEYS[2]: name set "<ns>:{~sched}:all"
-- ARGV[1]: name  ARGV[2]: cron  ARGV[3]: timezone  ARGV[4]: task (JSON)
-- ARGV[5]: overlap (allow|skip)  ARGV[6]: catch_up (none|one)
-- Returns: {OK, now} created; {CONFLICT} a schedule of that name exists (nothing
-- changed).
if redis.call('EXISTS', KEYS[1]) == 1 then return {CONFLICT} end
local now = now_ms()
-- cursor: every tick at or before it is handled (fired, skipped or missed).
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'cron', ARGV[2], 'timezone', ARGV[3],
  'task', ARGV[4], 'overlap', ARGV[5], 'catch_up', ARGV[6], 'paused', 0,
  'created_at', now, 'cursor', now, 'fired', 0, 'skipped', 0, 'missed', 0,
  'last_task', '', 'pending', '')
redis.call('SADD', KEYS[2], ARGV[1])
return {OK, now}

-- sched_delete.lua: remove a schedule and its fire history (tasks it fired stay).
-- KEYS[1]: schedule hash  KEYS[2]: its fires list  KEYS[3]: name set "<ns>:{~sched}:all"
-- ARGV[1]: name
-- Returns: {OK} deleted; {NOT_FOUND} no such schedule.
if redis.call('EXISTS', KEYS[1]) == 0 then return {NOT_FOUND} end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return {OK}

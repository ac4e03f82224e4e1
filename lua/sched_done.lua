-- sched_done.lua: a pending fire's task is stored; clear the marker.
-- KEYS[1]: schedule hash
-- ARGV[1]: the pending value "<tick>|<task id>" that was completed
-- Returns: {OK} cleared; {NOT_FOUND} the marker was already gone or is another fire's.
if redis.call('HGET', KEYS[1], 'pending') ~= ARGV[1] then return {NOT_FOUND} end
redis.call('HSET', KEYS[1], 'pending', '')
return {OK}

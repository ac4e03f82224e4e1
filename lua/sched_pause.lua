-- sched_pause.lua: pause or resume a schedule. Resuming moves the cursor to now, so
-- ticks that passed while paused are never fired (nor counted as missed).
-- KEYS[1]: schedule hash
-- ARGV[1]: "1" pause, "0" resume
-- Returns: {OK} done; {NOT_FOUND} no such schedule.
if redis.call('EXISTS', KEYS[1]) == 0 then return {NOT_FOUND} end
local was = redis.call('HGET', KEYS[1], 'paused')
if ARGV[1] == '0' and was == '1' then
  local now = now_ms()
  local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor')) or 0
  if now > cursor then redis.call('HSET', KEYS[1], 'cursor', now) end
end
redis.call('HSET', KEYS[1], 'paused', ARGV[1])
return {OK}

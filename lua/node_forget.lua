-- node_forget.lua: remove a dead node's record, unless it heartbeated meanwhile.
-- KEYS[1]: node index zset "<ns>:{~nodes}:all" (by last heartbeat)   KEYS[2]: node hash
-- ARGV[1]: node id   ARGV[2]: ms; only a node last seen at or before it is removed
-- Returns: {OK} removed; {CONFLICT} it heartbeated after ARGV[2]: nothing changed.
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if seen and tonumber(seen) > tonumber(ARGV[2]) then return {CONFLICT} end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return {OK}

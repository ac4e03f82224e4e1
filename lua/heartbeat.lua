-- heartbeat.lua: a node is alive; an offline node comes back active.
-- KEYS[1]: node index zset "<ns>:{~nodes}:all"   KEYS[2]: node hash
-- ARGV[1]: node id
-- Returns: {OK, status, now}; {NOT_FOUND} no such node.
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return {NOT_FOUND} end
local now = now_ms()
if status == 'offline' then
  status = 'active'
  redis.call('HSET', KEYS[2], 'status', status)
end
redis.call('HSET', KEYS[2], 'last_seen', now)
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {OK, status, now}

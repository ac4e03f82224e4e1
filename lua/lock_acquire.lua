-- lock_acquire.lua: take a handler lock when nobody holds it.
-- KEYS[1]: holder "<ns>:{~lock:<name>}:holder" (STRING, PX)
-- KEYS[2]: fence counter "<ns>:{~lock:<name>}:fence" (never deleted)
-- ARGV[1]: TTL ms   ARGV[2]: 32 hex characters of randomness (from the caller's CSPRNG)
-- Returns: {OK, token, fence, expires_ms} taken; {CONFLICT, remaining_ms} held by
-- someone else.
local ttl = tonumber(ARGV[1])
if not ttl or ttl <= 0 then
  return redis.error_reply('ERR lock TTL must be a positive number of ms')
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {CONFLICT, math.max(redis.call('PTTL', KEYS[1]), 0)}
end
local now = now_ms()
-- The counter survives the holder key, so a fence is never handed out twice.
local fence = redis.call('INCR', KEYS[2])
local token = fence .. '.' .. ARGV[2]
redis.call('SET', KEYS[1], token, 'PX', ttl)
return {OK, token, fence, now + ttl}

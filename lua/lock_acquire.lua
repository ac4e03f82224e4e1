-- lock_acquire.lua: take a handler lock when nobody holds it.
-- KEYS[1]: holder "<ns>:{~lock:<name>}:holder" (STRING, PX)
-- KEYS[2]: fence counter "<ns>:{~lock:<name>}:fence" (STRING, PX: kept ARGV[3] ms past
--   the holder's expiry, refreshed by every grant and extend)
-- ARGV[1]: TTL ms   ARGV[2]: 32 hex characters of randomness (from the caller's CSPRNG)
-- ARGV[3]: how long the fence counter outlives the lock, ms (well above any lock TTL)
-- Returns: {OK, token, fence, expires_ms} taken; {CONFLICT, remaining_ms} held by
-- someone else.
local ttl = tonumber(ARGV[1])
local keep = tonumber(ARGV[3])
if not ttl or ttl <= 0 then
  return redis.error_reply('ERR lock TTL must be a positive number of ms')
end
if not keep or keep <= 0 then
  return redis.error_reply('ERR fence retention must be a positive number of ms')
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {CONFLICT, math.max(redis.call('PTTL', KEYS[1]), 0)}
end
local now = now_ms()
-- The counter outlives the holder key by `keep`, so a fence is never handed out twice
-- while an earlier holder of the name could still be writing; a name unused for that
-- long starts again at 1 (docs/locks.md).
local fence = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ttl + keep)
local token = fence .. '.' .. ARGV[2]
redis.call('SET', KEYS[1], token, 'PX', ttl)
return {OK, token, fence, now + ttl}

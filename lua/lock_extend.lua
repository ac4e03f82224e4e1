-- lock_extend.lua: push a held lock's expiry to now + TTL, for its holder only.
-- KEYS[1]: holder "<ns>:{~lock:<name>}:holder"
-- KEYS[2]: fence counter "<ns>:{~lock:<name>}:fence" (its expiry follows the holder's)
-- ARGV[1]: the holder's token   ARGV[2]: TTL ms
-- ARGV[3]: how long the fence counter outlives the lock, ms
-- Returns: {OK, expires_ms} extended; {CONFLICT} the token is not the current holder's
-- (expired, released, or taken over): nothing changed.
local ttl = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
if not ttl or ttl <= 0 then
  return redis.error_reply('ERR lock TTL must be a positive number of ms')
end
if not keep or keep <= 0 then
  return redis.error_reply('ERR fence retention must be a positive number of ms')
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {CONFLICT} end
local now = now_ms()
redis.call('PEXPIRE', KEYS[1], ttl)
-- Never shortens the counter's life: only pushes it past the new expiry + keep.
if redis.call('PTTL', KEYS[2]) < ttl + keep then
  redis.call('PEXPIRE', KEYS[2], ttl + keep)
end
return {OK, now + ttl}

-- lock_extend.lua: push a held lock's expiry to now + TTL, for its holder only.
-- KEYS[1]: holder "<ns>:{~lock:<name>}:holder"
-- ARGV[1]: the holder's token   ARGV[2]: TTL ms
-- Returns: {OK, expires_ms} extended; {CONFLICT} the token is not the current holder's
-- (expired, released, or taken over): nothing changed.
local ttl = tonumber(ARGV[2])
if not ttl or ttl <= 0 then
  return redis.error_reply('ERR lock TTL must be a positive number of ms')
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {CONFLICT} end
local now = now_ms()
redis.call('PEXPIRE', KEYS[1], ttl)
return {OK, now + ttl}

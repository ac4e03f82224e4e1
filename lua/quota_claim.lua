-- quota_claim.lua: count what one token holds against its quota, in one step (two
-- submissions of one token racing each other cannot both take the last place).
-- KEYS[1]: the token's quota "<ns>:{~quota:<owner>}:<kind>" (ZSET: member → expiry ms,
--   `inf` for a member without one)
-- ARGV[1]: the quota (a whole number, 0 or more)
-- ARGV[2]: lifetime of the members claimed now, ms ("" for none: they stay until gone)
-- ARGV[3]: how many of the members that follow are gone (no longer exist: the caller
--   found them so); the rest are the members to claim
-- Expired members and the gone ones are dropped first; a member already counted is
-- claimed again at no cost (its expiry renewed).
-- Returns: {OK, newly} claimed, newly the comma-joined members that were not counted
-- before; {CONFLICT, held, quota} claiming would pass the quota: nothing claimed.
local key = KEYS[1]
local quota = tonumber(ARGV[1])
local gone = tonumber(ARGV[3])
if not quota or quota < 0 or not gone or gone < 0 then
  return redis.error_reply('ERR quota and gone count must be numbers, 0 or more')
end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
for i = 4, 3 + gone do
  redis.call('ZREM', key, ARGV[i])
end
local fresh = {}
for i = 4 + gone, #ARGV do
  if not redis.call('ZSCORE', key, ARGV[i]) then fresh[#fresh + 1] = ARGV[i] end
end
local held = redis.call('ZCARD', key)
if held + #fresh > quota then
  return {CONFLICT, held, quota}
end
local life = tonumber(ARGV[2])
local score = life and (now + life) or 'inf'
for i = 4 + gone, #ARGV do
  redis.call('ZADD', key, score, ARGV[i])
end
return {OK, table.concat(fresh, ',')}

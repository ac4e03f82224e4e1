-- sched_leader.lua: the scheduler's leader lease (only the leader fires schedules).
-- KEYS[1]: leader "<ns>:{~sched}:leader" (STRING, PX)
-- KEYS[2]: leadership counter "<ns>:{~sched}:leader_fence"
-- ARGV[1]: "acquire" | "renew" | "release"
-- ARGV[2]: acquire: random nonce; renew/release: the token held
-- ARGV[3]: TTL ms   ARGV[4]: acquire: holder label (process id), shown in the token
-- Returns: acquire {OK, token} or {CONFLICT, remaining_ms}; renew {OK} or
-- {CONFLICT, remaining_ms}; release {OK} or {CONFLICT}.
local mode, ttl = ARGV[1], tonumber(ARGV[3])
if mode == 'acquire' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return {CONFLICT, math.max(redis.call('PTTL', KEYS[1]), 0)}
  end
  local fence = redis.call('INCR', KEYS[2])
  local token = fence .. '.' .. ARGV[2] .. '.' .. ARGV[4]
  redis.call('SET', KEYS[1], token, 'PX', ttl)
  return {OK, token}
elseif mode == 'renew' then
  if redis.call('GET', KEYS[1]) ~= ARGV[2] then
    return {CONFLICT, math.max(redis.call('PTTL', KEYS[1]), 0)}
  end
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {OK}
elseif mode == 'release' then
  if redis.call('GET', KEYS[1]) ~= ARGV[2] then return {CONFLICT} end
  redis.call('DEL', KEYS[1])
  return {OK}
end
return redis.error_reply('ERR unknown mode')

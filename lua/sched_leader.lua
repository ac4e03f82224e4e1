-- sched_leader.lua: the scheduler's leader lease (only the leader fires schedules).
-- KEYS[1]: leader "<ns>:{~sched}:leader" (STRING, PX)
-- KEYS[2]: leadership counter "<ns>:{~sched}:leader_fence"
-- ARGV[1]: "acquire" | "renew" | "release"
-- ARGV[2]: acquire: random nonce; renew/release: the token held
-- ARGV[3]: TTL ms   ARGV[4]: acquire: holder label (process id), shown in the token
-- Returns: acquire {0, token} or {1, remaining_ms}; renew {0} or {1, remaining_ms};
-- release {0} or {1}.
local mode, ttl = ARGV[1], tonumber(ARGV[3])
if mode == 'acquire' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return {1, math.max(redis.call('PTTL', KEYS[1]), 0)}
  end
  local fence = redis.call('INCR', KEYS[2])
  local token = fence .. '.' .. ARGV[2] .. '.' .. ARGV[4]
  redis.call('SET', KEYS[1], token, 'PX', ttl)
  return {0, token}
elseif mode == 'renew' then
  if redis.call('GET', KEYS[1]) ~= ARGV[2] then
    return {1, math.max(redis.call('PTTL', KEYS[1]), 0)}
  end
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {0}
elseif mode == 'release' then
  if redis.call('GET', KEYS[1]) ~= ARGV[2] then return {1} end
  redis.call('DEL', KEYS[1])
  return {0}
end
return redis.error_reply('ERR unknown mode')

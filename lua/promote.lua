-- promote.lua: scheduled and retrying tasks whose time has come become pending.
-- KEYS[1]: queue prefix   ARGV[1]: wake channel   ARGV[2]: most tasks to move
-- Returns: number of tasks moved.
local p, channel, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local moved = 0
for _, set in ipairs({'scheduled', 'retrying'}) do
  local due = redis.call('ZRANGEBYSCORE', k_state_index(p, set), '-inf', now, 'LIMIT', 0, limit - moved)
  for _, id in ipairs(due) do
    local tkey = k_task(p, id)
    redis.call('ZREM', k_state_index(p, set), id)
    if redis.call('HGET', tkey, 'state') == set then
      local seq = redis.call('INCR', k_seq(p))
      local priority = tonumber(redis.call('HGET', tkey, 'priority')) or 0
      redis.call('HSET', tkey, 'state', 'pending')
      redis.call('ZADD', k_state_index(p, 'pending'), pending_score(priority, seq), id)
      emit(p, 'task.pending', id, '', 'pending')
      moved = moved + 1
    end
  end
end
if moved > 0 then redis.call('PUBLISH', channel, wake_new(p)) end
return moved

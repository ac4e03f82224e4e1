-- requeue_inbox.lua: a node went offline, is draining or left: the tasks in its inbox
-- (assigned, not started) go back to pending. This is not an attempt.
-- KEYS[1]: queue prefix   ARGV[1]: wake channel   ARGV[2]: node id
-- Returns: number of tasks returned to pending.
local p, channel, node = KEYS[1], ARGV[1], ARGV[2]
local inbox = k_inbox(p, node)
local ids = redis.call('LRANGE', inbox, 0, -1)
local moved = 0
for _, id in ipairs(ids) do
  local tkey = k_task(p, id)
  local h = redis.call('HMGET', tkey, 'state', 'node', 'priority', 'ckey')
  if h[1] == 'assigned' and h[2] == node then
    local seq = redis.call('INCR', k_seq(p))
    redis.call('HSET', tkey, 'state', 'pending')
    redis.call('HDEL', tkey, 'node')
    redis.call('ZADD', k_state_index(p, 'pending'), pending_score(tonumber(h[3]) or 0, seq), id)
    incr_load(p, node, -1)
    release_slot(p, id, h[4])
    emit(p, 'task.pending', id, node, 'pending')
    moved = moved + 1
  end
end
redis.call('DEL', inbox)
if moved > 0 then redis.call('PUBLISH', channel, wake_new(p)) end
return moved

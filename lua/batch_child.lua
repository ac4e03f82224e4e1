-- batch_child.lua: a child of the batch ended (idempotent: each child counts once).
-- KEYS[1]: batch prefix
-- ARGV[1]: child id   ARGV[2]: its terminal state
-- Returns: batch_check's answer ({-1} when the batch is gone).
local p, child, state = KEYS[1], ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. 'meta') == 0 then return {-1} end
if redis.call('SADD', p .. 'done', child) == 1 then
  redis.call('HINCRBY', p .. 'meta', 'done', 1)
  redis.call('HINCRBY', p .. 'meta', state, 1)
end
return batch_check(p, now_ms())

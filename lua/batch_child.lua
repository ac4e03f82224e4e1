-- batch_child.lua: a child of the batch ended (idempotent: each child counts once).
-- KEYS[1]: batch prefix
-- ARGV[1]: child id   ARGV[2]: its terminal state
-- Returns: batch_check's answer ({NOT_FOUND} when the batch is gone).
local p, child, state = KEYS[1], ARGV[1], ARGV[2]
if redis.call('EXISTS', k_batch_meta(p)) == 0 then return {NOT_FOUND} end
if redis.call('SADD', k_batch_done(p), child) == 1 then
  redis.call('HINCRBY', k_batch_meta(p), 'done', 1)
  redis.call('HINCRBY', k_batch_meta(p), state, 1)
end
return batch_check(p, now_ms())

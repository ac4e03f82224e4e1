-- batch_create.lua: a new batch, its first chunk of children about to be stored.
-- KEYS[1]: batch prefix "<ns>:{~batch:<id>}:"
-- ARGV[1]: batch id   ARGV[2]: then task (NewTask JSON) or ""   ARGV[3]: "1" held open
-- Returns: {OK, now}. The batch counts one chunk in flight (`adding`) until batch_add
-- records it, so children that finish before that cannot complete the batch early.
local p = KEYS[1]
local now = now_ms()
if redis.call('EXISTS', k_batch_meta(p)) == 1 then
  return redis.error_reply('ERR batch exists')
end
redis.call('HSET', k_batch_meta(p), 'id', ARGV[1], 'then', ARGV[2], 'open', ARGV[3],
  'total', 0, 'done', 0, 'succeeded', 0, 'failed', 0, 'cancelled', 0, 'adding', 1,
  'created_at', now, 'then_state', '')
return {OK, now}

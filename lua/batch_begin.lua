-- batch_begin.lua: a chunk of children is about to be stored in an existing batch.
-- KEYS[1]: batch prefix
-- Returns: {OK} counted in flight (`adding`); {NOT_FOUND} no such batch; {CONFLICT} it
-- finished.
local p = KEYS[1]
local h = redis.call('HMGET', k_batch_meta(p), 'id', 'finished_at')
if not h[1] then return {NOT_FOUND} end
if h[2] then return {CONFLICT} end
redis.call('HINCRBY', k_batch_meta(p), 'adding', 1)
return {OK}

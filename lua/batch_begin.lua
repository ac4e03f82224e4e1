-- batch_begin.lua: a chunk of children is about to be stored in an existing batch.
-- KEYS[1]: batch prefix
-- Returns: {0} counted in flight (`adding`); {1} no such batch; {2} it finished.
local p = KEYS[1]
local h = redis.call('HMGET', p .. 'meta', 'id', 'finished_at')
if not h[1] then return {1} end
if h[2] then return {2} end
redis.call('HINCRBY', p .. 'meta', 'adding', 1)
return {0}

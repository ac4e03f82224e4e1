-- batch_add.lua: records a chunk of children (stored, or not: then n = 0) and ends its
-- in-flight count; optionally closes a batch held open. May complete the batch.
-- KEYS[1]: batch prefix
-- ARGV[1]: "1" close   ARGV[2..]: child ids
-- Returns: batch_check's answer; {NOT_FOUND} when the batch is gone.
local p = KEYS[1]
if redis.call('EXISTS', k_batch_meta(p)) == 0 then return {NOT_FOUND} end
local n = #ARGV - 1
for i = 2, #ARGV, 1000 do
  local last = math.min(#ARGV, i + 999)
  redis.call('RPUSH', k_batch_children(p), unpack(ARGV, i, last))
end
redis.call('HINCRBY', k_batch_meta(p), 'total', n)
redis.call('HINCRBY', k_batch_meta(p), 'adding', -1)
if ARGV[1] == '1' then redis.call('HSET', k_batch_meta(p), 'open', 0) end
return batch_check(p, now_ms())

-- lock_release.lua: free a held lock, for its holder only. The fence counter stays.
-- KEYS[1]: holder "<ns>:{~lock:<name>}:holder"
-- ARGV[1]: the holder's token
-- Returns: {OK} released; {CONFLICT} the token is not the current holder's: nothing
-- changed.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {CONFLICT} end
redis.call('DEL', KEYS[1])
return {OK}

-- lock_release.lua: free a held lock, for its holder only. The fence counter stays.
-- KEYS[1]: holder "<ns>:{~lock:<name>}:holder"
-- ARGV[1]: the holder's token
-- Returns: {0} released; {1} the token is not the current holder's: nothing changed.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {1} end
redis.call('DEL', KEYS[1])
return {0}

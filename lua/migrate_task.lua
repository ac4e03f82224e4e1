-- migrate_task.lua: one task hash from schema 1 to schema 2 (`muster migrate`).
-- Schema 2 does not store the id (the key holds it), the sequence number (the pending
-- score holds it) nor any field at its default; the readers of both versions agree on
-- what an absent field means, so this only frees memory and cannot change a task.
-- KEYS[1]: the task hash
-- Returns: the number of fields removed.
local key = KEYS[1]
local h = redis.call('HMGET', key, 'created_at', 'run_at')
local drop = {'id', 'seq'}
if h[2] and h[2] == h[1] then drop[#drop + 1] = 'run_at' end
local defaults = {
  attempts = '0', fence = '0', priority = '0', requires = '', max_run_ms = '',
  max_attempts = tostring(DEFAULT_MAX_ATTEMPTS), timeout_ms = tostring(DEFAULT_TIMEOUT_MS),
  backoff_initial = tostring(DEFAULT_BACKOFF_INITIAL_MS),
  backoff_max = tostring(DEFAULT_BACKOFF_MAX_MS), retention_ms = tostring(DEFAULT_RETENTION_MS),
}
for field, default in pairs(defaults) do
  if redis.call('HGET', key, field) == default then drop[#drop + 1] = field end
end
return redis.call('HDEL', key, unpack(drop))

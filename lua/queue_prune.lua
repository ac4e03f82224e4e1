-- queue_prune.lua: forget an empty, idle queue: its leftovers (counters, event stream,
-- sequence, rate bucket, load hash) are deleted. The last step of pruning a queue from
-- the `queues` set, which has no hash tag: the caller removes the queue from it first
-- and adds it back on CONFLICT. A submit racing this sees the queue as new (no `stats`)
-- and adds the queue to the set again after its own script (submit.lua's `fresh`), so a
-- queue holding tasks is never left out of the set.
-- KEYS[1]: queue prefix "<ns>:{<queue>}:"
-- ARGV[1]: idle ms: the queue's last event must be at least this old
-- Returns: {OK} forgotten; {CONFLICT, why} it holds a task, a setting, a follow-up or a
-- node's load, or an event younger than ARGV[1] (why: `tasks`, `conf`, `followups`,
-- `load`, `active`): nothing changed.
local p = KEYS[1]
local idle = tonumber(ARGV[1])
if not idle or idle < 0 then
  return redis.error_reply('ERR idle must be a number of ms, 0 or more')
end
for _, st in ipairs({'blocked', 'scheduled', 'pending', 'running', 'retrying',
                     'succeeded', 'failed', 'cancelled'}) do
  if redis.call('ZCARD', k_state_index(p, st)) > 0 then return {CONFLICT, 'tasks'} end
end
if redis.call('EXISTS', k_conf(p)) == 1 then return {CONFLICT, 'conf'} end
if redis.call('LLEN', k_followups(p)) > 0 then return {CONFLICT, 'followups'} end
for _, v in ipairs(redis.call('HVALS', k_load(p))) do
  if tonumber(v) and tonumber(v) > 0 then return {CONFLICT, 'load'} end
end
local last = redis.call('XREVRANGE', k_events(p), '+', '-', 'COUNT', 1)[1]
if last then
  local ms = tonumber(string.match(last[1], '^(%d+)'))
  if ms and now_ms() - ms < idle then return {CONFLICT, 'active'} end
end
redis.call('DEL', k_events(p), k_stats(p), k_seq(p), k_bucket(p), k_load(p))
return {OK}

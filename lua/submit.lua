-- submit.lua: store new tasks, all or nothing (single submit is a batch of one).
-- KEYS[1..k]: queue prefixes "<ns>:{<queue>}:" (one per distinct queue in the batch)
-- ARGV[1]: wake channel   ARGV[2]: idempotency key suffix or ""   ARGV[3]: its TTL ms
-- ARGV[4]: n, then n records of 14 fields:
--   key index (into KEYS), id, kind, payload, priority, run_at ms or "", delay ms or "",
--   max_attempts, timeout_ms, backoff_initial, backoff_max, requires (csv), retention_ms,
--   max_run_ms or ""
--   each followed by k and k optional field/value pairs stored as they are (deps,
--   deps_left, on_dep_fail, unique_key, unique_ttl, ckey, climit, result_schema, batch,
--   origin). With deps_left the task starts blocked; with unique_key, a live holder of
--   the key (same queue) is returned instead of a new task.
-- Returns: {OK, now, "i=id,..."} created, except the 1-based indexes listed, whose
-- unique key a live task holds (its id); {REPEAT, now, "id,id,..."} an earlier
-- submission with this idempotency key (nothing created).
local channel, idem, idem_ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
-- Refuse before any write: Redis does not roll back a script that fails half-way.
if idem ~= '' and not (idem_ttl and idem_ttl > 0) then
  return redis.error_reply('ERR idempotency key TTL must be a positive number of ms')
end
local now = now_ms()
local idem_key = k_idempotency(KEYS[1], idem)
if idem ~= '' then
  local prev = redis.call('GET', idem_key)
  if prev then return {REPEAT, now, prev} end
end
local ids = {}
local dups = {}
-- Per task, what this script chose: `<state>@<run_at>`, or '' for a unique-key holder's.
local chosen = {}
local woken = {}
local b = 5
for i = 1, n do
  local p = KEYS[tonumber(ARGV[b])]
  local id = ARGV[b + 1]
  local priority = tonumber(ARGV[b + 4])
  local run_at = tonumber(ARGV[b + 5])
  local delay = tonumber(ARGV[b + 6])
  local extra = {}
  local k = tonumber(ARGV[b + 14])
  for j = 0, k - 1 do
    extra[#extra + 1] = ARGV[b + 15 + j * 2]
    extra[#extra + 1] = ARGV[b + 16 + j * 2]
    extra[ARGV[b + 15 + j * 2]] = ARGV[b + 16 + j * 2]
  end
  local holder = nil
  if extra.unique_key then
    local ukey = k_unique(p, extra.unique_key)
    local prev = redis.call('GET', ukey)
    if prev then
      local st = redis.call('HGET', k_task(p, prev), 'state')
      local live = st and st ~= 'succeeded' and st ~= 'failed' and st ~= 'cancelled'
      -- With a TTL the key holds until it runs out, whatever the holder's state.
      if live or redis.call('PTTL', ukey) > 0 then holder = prev end
    end
    if not holder then
      if extra.unique_ttl then
        redis.call('SET', ukey, id, 'PX', extra.unique_ttl)
      else
        redis.call('SET', ukey, id)
      end
    end
  end
  if holder then
    dups[#dups + 1] = i .. '=' .. holder
    ids[#ids + 1] = holder
    chosen[i] = ''
  else
    -- With both, the later of run_at and now + delay holds.
    if delay and (not run_at or now + delay > run_at) then run_at = now + delay end
    local tkey = k_task(p, id)
    local state = 'pending'
    if run_at and run_at > now then state = 'scheduled' end
    if tonumber(extra.deps_left or '0') > 0 then state = 'blocked' end
    local seq = redis.call('INCR', k_seq(p))
    redis.call('HSET', tkey, 'id', id, 'kind', ARGV[b + 2], 'payload', ARGV[b + 3],
      'priority', priority, 'state', state, 'attempts', 0, 'max_attempts', ARGV[b + 7],
      'timeout_ms', ARGV[b + 8], 'backoff_initial', ARGV[b + 9], 'backoff_max', ARGV[b + 10],
      'requires', ARGV[b + 11], 'retention_ms', ARGV[b + 12], 'fence', 0,
      'created_at', now, 'run_at', run_at or now, 'seq', seq, 'max_run_ms', ARGV[b + 13])
    if #extra > 0 then redis.call('HSET', tkey, unpack(extra)) end
    if state == 'scheduled' then
      redis.call('ZADD', k_state_index(p, 'scheduled'), run_at, id)
    elseif state == 'blocked' then
      redis.call('ZADD', k_state_index(p, 'blocked'), now, id)
    else
      redis.call('ZADD', k_state_index(p, 'pending'), pending_score(priority, seq), id)
      woken[p] = true
    end
    stat(p, 'submitted')
    emit(p, 'task.submitted', id, '', state)
    ids[#ids + 1] = id
    chosen[i] = state .. '@' .. (run_at or now)
  end
  b = b + 15 + k * 2
end
if idem ~= '' then
  redis.call('SET', idem_key, table.concat(ids, ','), 'PX', idem_ttl)
end
for p, _ in pairs(woken) do redis.call('PUBLISH', channel, wake_new(p)) end
return {OK, now, table.concat(dups, ','), table.concat(chosen, ',')}

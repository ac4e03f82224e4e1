-- submit.lua: store new tasks, all or nothing (single submit is a batch of one).
-- KEYS[1..k]: queue prefixes "<ns>:{<queue>}:" (one per distinct queue in the batch)
-- ARGV[1]: wake channel   ARGV[2]: idempotency key suffix or ""   ARGV[3]: its TTL ms
-- ARGV[4]: what the key is bound to, "<caller digest>:<body digest>", or "" (unbound:
--   internal callers; a repeat then answers whatever the key holds)
-- ARGV[5]: n, then n records: key index (into KEYS), id, priority, run_at ms or "",
--   delay ms or "", k, then k field/value pairs stored as they are (kind, payload and
--   every field not at its default: src/store/tasks.rs chooses). Among them, with
--   deps_left the task starts blocked; with unique_key, a live holder of the key (same
--   queue) is returned instead of a new task.
-- Written here: state, created_at, and run_at when it is not created_at. Per task one
-- HSET (and one XADD); the sequence, the indexes and the statistics once per call.
-- The idempotency record is "<binding>|id,id,..." (or "id,id,..." when unbound).
-- Returns: {OK, now, "i=id,...", chosen, "k,k,..."} created, except the 1-based
-- indexes listed, whose unique key a live task holds (its id); `chosen` per task
-- (below); the KEYS indexes of queues new to this script (no `stats` yet: never used,
-- or just pruned by queue_prune.lua), which the caller adds to the `queues` set again
-- after this script (the set has no hash tag); {REPEAT, now, "id,id,..."} an earlier
-- submission with this idempotency key (nothing created); {CONFLICT, now, "caller" or
-- "body"} the key was used by another caller or with another body (nothing created).
local channel, idem, idem_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local binding, n = ARGV[4], tonumber(ARGV[5])
-- Refuse before any write: Redis does not roll back a script that fails half-way.
if idem ~= '' and not (idem_ttl and idem_ttl > 0) then
  return redis.error_reply('ERR idempotency key TTL must be a positive number of ms')
end
local now = now_ms()
local now_s = tostring(now)
-- What `chosen` says of most tasks, made once.
local pending_now = 'pending@' .. now_s
local idem_key = k_idempotency(KEYS[1], idem)
if idem ~= '' then
  local prev = redis.call('GET', idem_key)
  if prev then
    local bar = string.find(prev, '|', 1, true)
    if not bar then return {REPEAT, now, prev} end
    local was, ids = string.sub(prev, 1, bar - 1), string.sub(prev, bar + 1)
    if binding ~= '' and was ~= binding then
      local colon = string.find(binding, ':', 1, true) or 0
      if string.sub(was, 1, colon) ~= string.sub(binding, 1, colon) then
        return {CONFLICT, now, 'caller'}
      end
      return {CONFLICT, now, 'body'}
    end
    return {REPEAT, now, ids}
  end
end
-- Queues without counters are new (or were pruned while this submit was on its way).
local fresh = {}
for i = 1, #KEYS do
  if redis.call('EXISTS', k_stats(KEYS[i])) == 0 then fresh[#fresh + 1] = i end
end
local ids = {}
local dups = {}
-- Per task, what this script chose: `<state>@<run_at>`, or '' for a unique-key holder's.
local chosen = {}
local woken = {}
-- Sequence numbers (FIFO within a priority), reserved once per queue: n at a time.
local seqs = {}
local function next_seq(p)
  local s = seqs[p]
  if not s then
    local last = redis.call('INCRBY', k_seq(p), n)
    s = {next = last - n + 1}
    seqs[p] = s
  end
  s.next = s.next + 1
  return s.next - 1
end
local b = 6
for i = 1, n do
  local p = KEYS[tonumber(ARGV[b])]
  local id = ARGV[b + 1]
  local priority = tonumber(ARGV[b + 2])
  local run_at = tonumber(ARGV[b + 3])
  local delay = tonumber(ARGV[b + 4])
  local k = tonumber(ARGV[b + 5])
  -- The fields are written straight from ARGV (b + 6 .. last); of them, only these three
  -- are read here.
  local first, last = b + 6, b + 5 + k * 2
  local unique_key, unique_ttl, deps_left = nil, nil, nil
  for j = first, last, 2 do
    local name = ARGV[j]
    if name == 'unique_key' then unique_key = ARGV[j + 1]
    elseif name == 'unique_ttl' then unique_ttl = ARGV[j + 1]
    elseif name == 'deps_left' then deps_left = ARGV[j + 1]
    end
  end
  local holder = nil
  if unique_key then
    local ukey = k_unique(p, unique_key)
    local prev = redis.call('GET', ukey)
    if prev then
      local st = redis.call('HGET', k_task(p, prev), 'state')
      local live = st and st ~= 'succeeded' and st ~= 'failed' and st ~= 'cancelled'
      -- With a TTL the key holds until it runs out, whatever the holder's state.
      if live or redis.call('PTTL', ukey) > 0 then holder = prev end
    end
    if not holder then
      if unique_ttl then
        redis.call('SET', ukey, id, 'PX', unique_ttl)
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
    if tonumber(deps_left or '0') > 0 then state = 'blocked' end
    if run_at and run_at ~= now then
      redis.call('HSET', tkey, 'state', state, 'created_at', now_s, 'run_at', run_at,
        unpack(ARGV, first, last))
    else
      redis.call('HSET', tkey, 'state', state, 'created_at', now_s, unpack(ARGV, first, last))
    end
    if state == 'scheduled' then
      zadd_later(k_state_index(p, 'scheduled'), run_at, id)
    elseif state == 'blocked' then
      zadd_later(k_state_index(p, 'blocked'), now, id)
    else
      zadd_later(k_state_index(p, 'pending'), pending_score(priority, next_seq(p)), id)
      woken[p] = true
    end
    stat(p, 'submitted')
    emit(p, 'task.submitted', id, '', state)
    ids[#ids + 1] = id
    if run_at or state ~= 'pending' then
      chosen[i] = state .. '@' .. (run_at or now)
    else
      chosen[i] = pending_now
    end
  end
  b = b + 6 + k * 2
end
if idem ~= '' then
  local record = table.concat(ids, ',')
  if binding ~= '' then record = binding .. '|' .. record end
  redis.call('SET', idem_key, record, 'PX', idem_ttl)
end
for p, _ in pairs(woken) do redis.call('PUBLISH', channel, wake_new(p)) end
return {OK, now, table.concat(dups, ','), table.concat(chosen, ','), table.concat(fresh, ',')}

-- report_many.lua: a node's batch of completions and failures in one call; each item
-- answers exactly what complete.lua or fail.lua would have (lib.lua's complete_one and
-- fail_one), and the per-call writes (TIME, ZREM running, load, PUBLISH done) happen
-- once per batch.
-- KEYS[1]: queue prefix (every task of the batch is in this queue)
-- ARGV[1]: wake channel   ARGV[2]: node id ("" = any: admin)   ARGV[3]: jitter seed
--   in [0, 1)   ARGV[4]: n, then n records of 6 fields: task id, fence, nonce, outcome
--   ("s" succeeded, "f" failed), result JSON or error text, "1" retryable (failures)
-- Returns: n replies in order, each as complete.lua's or fail.lua's, flat: four
-- elements per report (one array in all, no table per report; nil where absent):
-- OK, state, run_ms, node accepted; REPEAT, state repeat; NOT_FOUND no such task;
-- CONFLICT, state stale or foreign token.
local p, channel, node = KEYS[1], ARGV[1], ARGV[2]
local seed, n = tonumber(ARGV[3]) or 0.5, tonumber(ARGV[4])
local acc = report_acc()
local out = {}
for i = 0, n - 1 do
  local b = 5 + i * 6
  local o = i * 4
  if ARGV[b + 3] == 's' then
    out[o + 1], out[o + 2], out[o + 3], out[o + 4] =
      complete_one(p, acc, ARGV[b], node, ARGV[b + 1], ARGV[b + 2], ARGV[b + 4])
  else
    -- Golden-ratio steps spread one seed into distinct jitters, one per item.
    local jitter = (seed + (i + 1) * 0.6180339887) % 1
    out[o + 1], out[o + 2], out[o + 3], out[o + 4] =
      fail_one(p, acc, ARGV[b], node, ARGV[b + 1], ARGV[b + 2], ARGV[b + 4],
        ARGV[b + 5] == '1', jitter)
  end
end
report_flush(p, channel, acc)
return out

-- fail.lua: a node reports that its current attempt failed (a report batch of one; the
-- logic is lib.lua's fail_one, shared with report_many.lua).
-- KEYS[1]: queue prefix
-- ARGV[1]: wake channel   ARGV[2]: task id   ARGV[3]: node id ("" = any: admin)
-- ARGV[4]: fence   ARGV[5]: nonce   ARGV[6]: error text   ARGV[7]: "1" retryable
-- ARGV[8]: jitter in [0, 1)
-- Returns: {OK, state, run_ms, node} with state retrying, failed or cancelled;
-- {REPEAT, state} a repeat for the same lease already recorded; {NOT_FOUND} no such
-- task; {CONFLICT, state} stale or foreign token: nothing written.
local p, channel = KEYS[1], ARGV[1]
local acc = report_acc()
local code, state, run_ms, node = fail_one(p, acc, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7] == '1',
  tonumber(ARGV[8]) or 0.5)
report_flush(p, channel, acc)
return {code, state, run_ms, node}

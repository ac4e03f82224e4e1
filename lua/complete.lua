-- complete.lua: accept a node's result for its current lease (a report batch of one;
-- the logic is lib.lua's complete_one, shared with report_many.lua).
-- KEYS[1]: queue prefix
-- ARGV[1]: wake channel   ARGV[2]: task id   ARGV[3]: node id ("" = any: admin)
-- ARGV[4]: fence   ARGV[5]: nonce   ARGV[6]: result JSON
-- Returns: {OK, state, run_ms, node} accepted (state succeeded, or cancelled when a
-- cancel was pending); {REPEAT, state} a repeat of the completion already accepted for
-- this very lease (answered like the first, nothing written); {NOT_FOUND} no such task;
-- {CONFLICT, state} stale or foreign token: nothing written.
local p, channel = KEYS[1], ARGV[1]
local acc = report_acc()
local code, state, run_ms, node = complete_one(p, acc, ARGV[2], ARGV[3], ARGV[4], ARGV[5],
  ARGV[6])
report_flush(p, channel, acc)
return {code, state, run_ms, node}

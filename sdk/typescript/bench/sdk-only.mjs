// The SDK's own cost per task: the Worker against an in-process fake `fetch` that
// answers leases and reports at once (no network, no server). The fake builds and parses
// the same JSON a server would, so its cost is included in the figure.
//
//   node bench/sdk-only.mjs [CONCURRENCY] [N]        (defaults 64, 200000)
import { Worker } from "../dist/index.js";
const C = Number(process.argv[2] || 64), N = Number(process.argv[3] || 200000);
let seq = 0;
function leaseReply(max) {
  const leases = [];
  for (let i = 0; i < max; i++) {
    const id = `01M8RG0KDSXZJRZR9AJF${String(seq++).padStart(6, "0")}.bench`;
    leases.push({ task: { id, queue: "bench", kind: "noop", payload: { i: seq }, priority: 0, state: "running", attempts: 1, max_attempts: 3, timeout_ms: 30000, max_run_ms: null, requires: [], node: "N", result: null, error: null, progress: null, fence: 1, created_at: "2026-12-01T09:47:17.123Z", run_at: "2026-12-01T09:47:17.123Z", started_at: "2026-12-01T09:47:17.123Z", finished_at: null, lease_expires_at: "2026-12-01T09:47:47.123Z", cancel_requested: false, depends_on: [], on_dependency_failure: null, unique_key: null, concurrency_key: null, concurrency_limit: null, batch: null, origin: null, result_schema: null }, lease_token: "1.5b4c177b96fb3d0fb4032c58", fence: 1, lease_expires_at: "2026-12-01T09:47:47.123Z" });
  }
  return JSON.stringify({ leases });
}
let leased = 0;
const fakeFetch = async (url, init) => {
  const path = new URL(url).pathname;
  let body;
  if (path === "/v1/nodes") body = JSON.stringify({ id: "N", token: "T", heartbeat_interval_ms: 5000 });
  else if (path.endsWith("/lease")) { const max = JSON.parse(init.body).max; const m = Math.min(max, N - leased); leased += m; if (m === 0) { await new Promise(r => setTimeout(r, 50)); } body = leaseReply(m); }
  else if (path.endsWith("/reports")) { const r = JSON.parse(init.body).reports; body = JSON.stringify({ results: r.map((x) => ({ task_id: x.task_id, status: 200, state: "succeeded" })) }); }
  else body = JSON.stringify({ status: "active", cancel: [] });
  return new Response(body, { status: 200, headers: { "content-type": "application/json" } });
};
const w = new Worker({ server: "http://fake:1", token: "t", queues: ["bench"], concurrency: C, handleSignals: false, logger: null, fetch: fakeFetch });
w.task("noop", () => null);
const c0 = process.cpuUsage(); const t0 = performance.now();
const run = w.run();
while (w.stats.succeeded < N) await new Promise(r => setTimeout(r, 5));
const secs = (performance.now() - t0) / 1000; const c = process.cpuUsage(c0);
console.log(`C=${C}: ${Math.round(N / secs)}/s, CPU ${((c.user + c.system) / N).toFixed(1)} µs/task, calls ${w.stats.leaseCalls + w.stats.reportCalls}`);
await w.stop(); await run;

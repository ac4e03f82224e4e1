// The cost of one call of the SDK's transport: node:http (the default) against the
// global fetch (the `fetch` option), side by side in one process, against a local
// node:http server answering a report call's body with 32 leases (about 25 KB, the size
// of a worker's report answer at concurrency 64). Two calls in flight, as a worker has.
//
//   node bench/transport.mjs [CALLS]          (default 3000 per round, 3 rounds each)
import http from "node:http";
import { Transport } from "../dist/http.js";

const CALLS = Number(process.argv[2] || 3000);
const lease = (i) => ({
  task: { id: `01M8RG0KDSXZJRZR9AJF${String(i).padStart(6, "0")}.bench`, queue: "bench", kind: "noop", payload: { i }, priority: 0, state: "running", attempts: 1, max_attempts: 3, timeout_ms: 30000, max_run_ms: null, requires: [], node: "N", result: null, error: null, progress: null, fence: 1, created_at: "2026-12-01T09:47:17.123Z", run_at: "2026-12-01T09:47:17.123Z", started_at: "2026-12-01T09:47:17.123Z", finished_at: null, lease_expires_at: "2026-12-01T09:47:47.123Z", cancel_requested: false, depends_on: [], on_dependency_failure: null, unique_key: null, concurrency_key: null, concurrency_limit: null, batch: null, origin: null, result_schema: null },
  lease_token: "1.5b4c177b96fb3d0fb4032c58",
  fence: 1,
  lease_expires_at: "2026-12-01T09:47:47.123Z",
});
const answer = JSON.stringify({
  results: Array.from({ length: 32 }, (_, i) => ({ task_id: `t${i}`, status: 200, state: "succeeded" })),
  leases: Array.from({ length: 32 }, (_, i) => lease(i)),
});
const reports = JSON.stringify({
  reports: Array.from({ length: 32 }, (_, i) => ({ task_id: `01M8RG0KDSXZJRZR9AJF${i}.bench`, lease_token: "1.5b4c177b96fb3d0fb4032c58", outcome: "succeeded", result: null })),
  lease_max: 32,
});
const server = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(answer);
  });
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const url = `http://127.0.0.1:${server.address().port}`;
const transports = { "node:http": new Transport([url]), fetch: new Transport([url], globalThis.fetch) };

async function round(t) {
  let left = CALLS;
  const call = async () => {
    while (left-- > 0) await t.call("POST", "/v1/nodes/N/reports", { token: "t", body: reports });
  };
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all([call(), call()]);
  const c = process.cpuUsage(c0);
  return { cpu: (c.user + c.system) / CALLS, wall: ((performance.now() - t0) * 1000) / CALLS };
}
// Both servers' and clients' CPU is this process's: the figures compare, they are not
// a client's cost alone.
for (let r = 0; r < 3; r++) {
  for (const [name, t] of Object.entries(transports)) {
    await round(t); // warm-up
    const m = await round(t);
    console.log(`${name.padEnd(9)} ${m.cpu.toFixed(0).padStart(5)} µs CPU per call (client and server), ${m.wall.toFixed(0).padStart(5)} µs wall`);
  }
}
transports["node:http"].close();
server.close();

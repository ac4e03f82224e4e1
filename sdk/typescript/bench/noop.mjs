// No-op throughput of one worker process, the peers' "process" method
// (../../shared/bench/peers/README.md): N tasks pre-submitted, then one worker process
// starts on the full queue.
//
//   node bench/noop.mjs [N] [CONCURRENCY]        (defaults 50000, 64)
//
// Env: MUSTER_BIN (use a release build: cargo build --release), BENCH_AGENT=1 to also
// time the Rust `muster agent --builtin` on the same stack, BENCH_REPEATS (1).
// Prints, per run: handler rate N / (last handler end - first handler start), as the
// peers measure; accepted rate N / (last report accepted - first handler start); and
// the worker's CPU per task.
import { spawn } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Client } from "../dist/index.js";
import { MUSTER_BIN, queueName, startStack } from "../test/helpers.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const N = Number(process.argv[2] || 50_000);
const C = Number(process.argv[3] || 64);
const REPEATS = Number(process.env.BENCH_REPEATS || 1);

const fmt = (x) => Math.round(x).toLocaleString("en-US");
const stack = await startStack();
try {
  const client = new Client({ server: stack.url, token: stack.token });
  console.log(`muster: ${MUSTER_BIN}; N = ${N}, concurrency ${C}, node ${process.version}`);
  for (let r = 1; r <= REPEATS; r++) {
    const q = queueName("bench");
    const t0 = performance.now();
    for (let i = 0; i < N; i += 10_000) {
      const len = Math.min(10_000, N - i);
      await client.submitMany(Array.from({ length: len }, (_, j) => ({ kind: "noop", payload: { i: i + j } })), { queue: q });
    }
    const submitSecs = (performance.now() - t0) / 1000;
    const p = spawn(process.execPath, [path.join(HERE, "worker.mjs")], {
      env: { ...process.env, MUSTER_SERVER: stack.url, MUSTER_TOKEN: stack.token, QUEUE: q, CONCURRENCY: String(C), N: String(N), SPAWNED_AT: String(performance.timeOrigin + performance.now()) },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    await once(p, "exit");
    const res = JSON.parse(out.trim());
    console.log(
      `run ${r}: submit ${fmt(N / submitSecs)}/s; TS worker: handler rate ${fmt(N / res.handler_secs)}/s, ` +
        `accepted rate ${fmt(N / res.accepted_secs)}/s, incl. startup ${fmt(N / res.incl_startup_secs)}/s, ` +
        `CPU ${res.cpu_us_per_task.toFixed(1)} µs/task (user ${res.cpu_user_us_per_task.toFixed(1)}, sys ${res.cpu_sys_us_per_task.toFixed(1)}), RSS ${res.rss_mib} MiB, ` +
        `lease calls ${res.stats.leaseCalls}, report calls ${res.stats.reportCalls}`,
    );
    if (process.env.BENCH_AGENT === "1") {
      const q2 = queueName("bench-agent");
      for (let i = 0; i < N; i += 10_000) {
        const len = Math.min(10_000, N - i);
        await client.submitMany(Array.from({ length: len }, (_, j) => ({ kind: "noop", payload: { i: i + j } })), { queue: q2 });
      }
      const a0 = performance.now();
      const ag = spawn(MUSTER_BIN, ["agent", "--server", stack.url, "--token", stack.token, "--queue", q2, "--capacity", String(C), "--builtin"], {
        stdio: "ignore",
        env: { ...process.env, RUST_LOG: "warn" },
      });
      for (;;) {
        const page = await client.request("GET", `/v1/queues/${q2}`);
        const c = page.counts ?? page;
        if ((c.succeeded ?? 0) >= N) break;
        await new Promise((res) => setTimeout(res, 20));
      }
      const secs = (performance.now() - a0) / 1000;
      ag.kill("SIGKILL");
      console.log(`run ${r}: Rust muster agent --builtin (capacity ${C}): ${fmt(N / secs)}/s incl. startup`);
    }
  }
} finally {
  await stack.stop();
}

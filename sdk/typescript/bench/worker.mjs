// The worker process of bench/noop.mjs and scripts/bench-sdk: one Worker with a no-op
// handler. Env: QUEUE, CONCURRENCY, PREFETCH, N, SLEEP_MS (0: the handler returns at
// once; else it awaits a timer of that many ms), SPAWNED_AT (epoch ms), FETCH=1 (the
// calls go through the global fetch instead of node:http, for an A/B), plus
// MUSTER_SERVER / MUSTER_TOKEN. Prints one JSON line when N reports were accepted, then
// exits.
import { Worker } from "../dist/index.js";

const n = Number(process.env.N);
const spawnedAt = Number(process.env.SPAWNED_AT);
const sleepMs = Number(process.env.SLEEP_MS || 0);
const now = () => performance.timeOrigin + performance.now();
const w = new Worker({
  queues: [process.env.QUEUE],
  concurrency: Number(process.env.CONCURRENCY || 64),
  prefetch: Number(process.env.PREFETCH || 0),
  handleSignals: false,
  logger: null,
  ...(process.env.FETCH === "1" ? { fetch: globalThis.fetch } : {}),
});
let count = 0;
let firstStart = 0;
let lastEnd = 0;
const mark = () => {
  const t = now();
  if (count === 0) firstStart = t;
  count++;
  lastEnd = t;
  return null;
};
w.task("noop", sleepMs > 0 ? () => new Promise((res) => setTimeout(() => res(mark()), sleepMs)) : mark);
const cpu0 = process.cpuUsage();
const run = w.run();
const timer = setInterval(async () => {
  if (w.stats.succeeded < n) return;
  clearInterval(timer);
  const accepted = now();
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(
    JSON.stringify({
      n: count,
      handler_secs: (lastEnd - firstStart) / 1000,
      accepted_secs: (accepted - firstStart) / 1000,
      incl_startup_secs: (accepted - spawnedAt) / 1000,
      cpu_us_per_task: (cpu.user + cpu.system) / n,
      cpu_user_us_per_task: cpu.user / n,
      cpu_sys_us_per_task: cpu.system / n,
      stats: w.stats,
      rss_mib: Math.round(process.memoryUsage().rss / 1048576),
    }) + "\n",
  );
  await w.stop();
  await run;
}, 2);

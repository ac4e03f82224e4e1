// The worker in this process against a real `muster serve`: handlers, retries,
// NonRetryable, cancellation, progress, leases renewed past their TTL, batching.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { AuthenticationError, Client, NonRetryable, TaskStoppedError, Worker } from "../dist/index.js";
import { memoryLogger, queueName, startStack, until } from "./helpers.mjs";

let stack;
let client;
const workers = [];
before(async () => {
  stack = await startStack();
  client = new Client({ server: stack.url, token: stack.token });
});
after(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await stack?.stop();
});

/** A worker on fresh queues, running; stopped when the file ends. */
function startWorker(handlers, opts = {}) {
  const q = opts.queues?.[0] ?? queueName();
  const logger = memoryLogger();
  const w = new Worker({
    server: stack.url,
    token: stack.token,
    queues: [q],
    concurrency: 8,
    handleSignals: false,
    logger,
    ...opts,
  });
  for (const [kind, h] of Object.entries(handlers)) w.task(kind, h);
  const running = w.run();
  running.catch(() => {});
  workers.push(w);
  return { w, q, logger, running };
}

describe("Worker", () => {
  test("an async handler's result is the task's result; ctx has id, attempt and fence", async () => {
    let seen;
    const { q } = startWorker({
      add: async (payload, ctx) => {
        seen = { taskId: ctx.taskId, attempt: ctx.attempt, fence: ctx.fence, kind: ctx.kind, queue: ctx.queue };
        return { sum: payload.a + payload.b };
      },
    });
    const t = await client.submit("add", { a: 1, b: 2 }, { queue: q, maxAttempts: 3 });
    const d = await client.wait(t.id, { timeoutMs: 30_000 });
    assert.equal(d.state, "succeeded");
    assert.deepEqual(d.result, { sum: 3 });
    assert.equal(d.attempts, 1);
    assert.deepEqual(seen, { taskId: t.id, attempt: 1, fence: d.fence, kind: "add", queue: q });
    assert.ok(seen.fence >= 1);
  });

  test("a plain (sync) handler works, and undefined is a null result", async () => {
    const { q } = startWorker({ upper: (p) => p.toUpperCase(), nothing: () => undefined });
    const a = await client.submit("upper", "hi", { queue: q });
    const b = await client.submit("nothing", {}, { queue: q });
    assert.equal((await client.wait(a.id, { timeoutMs: 30_000 })).result, "HI");
    const nb = await client.wait(b.id, { timeoutMs: 30_000 });
    assert.equal(nb.state, "succeeded");
    assert.equal(nb.result ?? null, null);
  });

  test("a failing handler is retried and then succeeds", async () => {
    const attempts = [];
    const { q } = startWorker({
      flaky: async (_p, ctx) => {
        attempts.push(ctx.attempt);
        if (ctx.attempt < 3) throw new Error(`boom ${ctx.attempt}`);
        return "ok";
      },
    });
    const t = await client.submit("flaky", {}, { queue: q, maxAttempts: 3, backoff: { initialMs: 10, maxMs: 50 } });
    const d = await client.wait(t.id, { timeoutMs: 30_000 });
    assert.equal(d.state, "succeeded", JSON.stringify(d));
    assert.equal(d.result, "ok");
    assert.equal(d.attempts, 3);
    assert.deepEqual(attempts, [1, 2, 3]);
  });

  test("a retryable error that never clears fails after maxAttempts with message and stack", async () => {
    const { q } = startWorker({
      broken: async () => {
        throw new TypeError("boom for good");
      },
    });
    const t = await client.submit("broken", {}, { queue: q, maxAttempts: 2, backoff: { initialMs: 10, maxMs: 20 } });
    const d = await client.wait(t.id, { timeoutMs: 30_000 });
    assert.equal(d.state, "failed");
    assert.equal(d.attempts, 2);
    assert.match(d.error, /^TypeError: boom for good/);
    assert.match(d.error, /\n\s+at /, "the stack's top frames follow the message");
  });

  test("NonRetryable fails the task for good on the first attempt", async () => {
    const { q } = startWorker({
      strict: async () => {
        throw new NonRetryable("bad input: a is missing");
      },
    });
    const t = await client.submit("strict", {}, { queue: q, maxAttempts: 5 });
    const d = await client.wait(t.id, { timeoutMs: 30_000 });
    assert.equal(d.state, "failed");
    assert.equal(d.attempts, 1);
    assert.match(d.error, /bad input: a is missing/);
  });

  test("a kind without a handler fails for good, naming the kinds the worker has", async () => {
    const { q } = startWorker({ known: () => 1 });
    const t = await client.submit("unknown", {}, { queue: q, maxAttempts: 3 });
    const d = await client.wait(t.id, { timeoutMs: 30_000 });
    assert.equal(d.state, "failed");
    assert.equal(d.attempts, 1);
    assert.match(d.error, /no handler for kind "unknown".*known/);
  });

  test("a result that is not JSON fails the task for good", async () => {
    const { q } = startWorker({ big: () => 10n });
    const t = await client.submit("big", {}, { queue: q, maxAttempts: 3 });
    const d = await client.wait(t.id, { timeoutMs: 30_000 });
    assert.equal(d.state, "failed");
    assert.match(d.error, /not JSON/);
  });

  test("cancellation reaches a running handler through ctx.signal and ctx.cancelled", async () => {
    let started;
    const startedP = new Promise((r) => (started = r));
    let observed;
    const { q } = startWorker({
      long: async (_p, ctx) => {
        started();
        const reason = await new Promise((resolve) => {
          const t = setTimeout(() => resolve("not cancelled"), 20_000);
          ctx.signal.addEventListener("abort", () => {
            clearTimeout(t);
            resolve(ctx.signal.reason);
          });
        });
        observed = { reason, cancelled: ctx.cancelled, stopReason: ctx.stopReason };
        throw reason;
      },
    });
    const t = await client.submit("long", {}, { queue: q });
    await startedP;
    const c = await client.cancel(t.id);
    assert.ok(c.state === "cancelled" || c.cancelRequested, JSON.stringify(c));
    const d = await client.wait(t.id, { timeoutMs: 15_000 });
    assert.equal(d.state, "cancelled");
    await until(() => observed, { what: "the handler to see the cancel" });
    assert.ok(observed.reason instanceof TaskStoppedError);
    assert.equal(observed.reason.reason, "cancelled");
    assert.equal(observed.cancelled, true);
    assert.equal(observed.stopReason, "cancelled");
  });

  test("progress is visible on the task while the handler runs", async () => {
    let release;
    const gate = new Promise((r) => (release = r));
    const { q } = startWorker({
      steps: async (_p, ctx) => {
        await ctx.progress({ done: 1, total: 2 });
        await gate;
        return "finished";
      },
    });
    const t = await client.submit("steps", {}, { queue: q });
    const seen = await until(async () => {
      const g = await client.get(t.id);
      return g.progress?.done === 1 ? g : null;
    }, { what: "progress on the task" });
    assert.deepEqual(seen.progress, { done: 1, total: 2 });
    assert.equal(seen.state, "running");
    release();
    const d = await client.wait(t.id, { timeoutMs: 30_000 });
    assert.equal(d.state, "succeeded");
    assert.equal(d.result, "finished");
  });

  test("a task longer than its lease TTL keeps running: the worker renews the lease", async () => {
    const { q, w } = startWorker({
      slow: async () => {
        await delay(2_500);
        return "slow but fine";
      },
    });
    const t = await client.submit("slow", {}, { queue: q, timeoutMs: 600, maxAttempts: 1 });
    const d = await client.wait(t.id, { timeoutMs: 30_000 });
    assert.equal(d.state, "succeeded", JSON.stringify(d));
    assert.equal(d.attempts, 1);
    assert.equal(d.result, "slow but fine");
    assert.ok(w.stats.renewals >= 3, `renewals: ${w.stats.renewals}`);
  });

  test("maxRunMs stops a handler that runs past it: signal reason timeout, retryable failure", async () => {
    let reason;
    const { q } = startWorker({
      stuck: async (_p, ctx) => {
        await new Promise((r) => ctx.signal.addEventListener("abort", r));
        reason = ctx.signal.reason.reason;
      },
    });
    const t = await client.submit("stuck", {}, { queue: q, maxRunMs: 300, maxAttempts: 1 });
    const d = await client.wait(t.id, { timeoutMs: 30_000 });
    assert.equal(d.state, "failed");
    assert.match(d.error, /timed out after 300 ms/);
    await until(() => reason, { what: "the handler to see the abort" });
    assert.equal(reason, "timeout");
  });

  test("no per-task HTTP on the happy path: 2,000 tasks in far fewer lease and report calls", async () => {
    const { q, w } = startWorker({ noop: () => null }, { concurrency: 200 });
    const ids = await client.submitMany(Array.from({ length: 2_000 }, (_, i) => ({ kind: "noop", payload: i })), { queue: q });
    await until(() => w.stats.succeeded >= 2_000, { ms: 60_000, what: "2,000 tasks" });
    const last = await client.get(ids.at(-1));
    assert.equal(last.state, "succeeded");
    assert.ok(w.stats.reportCalls < 2_000 / 4, `report calls: ${w.stats.reportCalls}`);
    assert.ok(w.stats.leaseCalls < 2_000 / 4, `lease calls: ${w.stats.leaseCalls}`);
    assert.equal(w.stats.renewals, 0);
  });

  test("concurrency bounds the handlers running at once", async () => {
    let now = 0;
    let peak = 0;
    const { q } = startWorker(
      {
        sleepy: async () => {
          now++;
          peak = Math.max(peak, now);
          await delay(50);
          now--;
        },
      },
      { concurrency: 3 },
    );
    const ids = await client.submitMany(Array.from({ length: 15 }, () => ({ kind: "sleepy" })), { queue: q });
    for (const id of ids) assert.equal((await client.wait(id, { timeoutMs: 30_000 })).state, "succeeded");
    assert.ok(peak <= 3, `peak ${peak}`);
    assert.ok(peak >= 2, `peak ${peak}`);
  });

  test("prefetch: leases held to concurrency + prefetch, handlers to concurrency; a waiting one cancelled never starts", async () => {
    const started = [];
    let now = 0;
    let most = 0;
    let release;
    const gate = new Promise((r) => (release = r));
    const { w, q } = startWorker(
      {
        hold: async (_p, ctx) => {
          started.push(ctx.taskId);
          now++;
          most = Math.max(most, now);
          await gate;
          now--;
          return null;
        },
      },
      { concurrency: 2, prefetch: 3 },
    );
    const ids = [];
    for (let i = 0; i < 6; i++) ids.push((await client.submit("hold", {}, { queue: q })).id);
    await until(async () => {
      const states = await Promise.all(ids.map(async (id) => (await client.get(id)).state));
      return states.filter((s) => s === "running").length === 5;
    }, { ms: 20_000, what: "five leases held" });
    await delay(300);
    assert.equal(started.length, 2, "two handlers run, three wait");
    const nodes = await (await fetch(`${stack.url}/v1/nodes`, { headers: { authorization: `Bearer ${stack.token}` } })).json();
    assert.equal(nodes.items.find((n) => n.id === w.nodeId)?.capacity, 5);
    let waiting;
    for (const id of ids) {
      if ((await client.get(id)).state === "running" && !started.includes(id)) {
        waiting = id;
        break;
      }
    }
    assert.ok(waiting, "a prefetched task");
    await client.cancel(waiting);
    assert.equal((await client.wait(waiting, { timeoutMs: 15_000 })).state, "cancelled");
    release();
    for (const id of ids.filter((i) => i !== waiting)) {
      assert.equal((await client.wait(id, { timeoutMs: 30_000 })).state, "succeeded");
    }
    assert.ok(!started.includes(waiting), "the cancelled prefetched task's handler ran");
    assert.equal(started.length, 5);
    assert.equal(most, 2);
    assert.throws(() => new Worker({ concurrency: 9_000, prefetch: 1_001 }), RangeError);
  });

  test("stop() drains: running handlers finish, then run() resolves and the node is gone", async () => {
    let release;
    const gate = new Promise((r) => (release = r));
    const { q, w, running } = startWorker({ wait: async () => (await gate, "done") });
    const t = await client.submit("wait", {}, { queue: q });
    await until(async () => (await client.get(t.id)).state === "running", { what: "running" });
    const nodeId = w.nodeId;
    const stopped = w.stop();
    setTimeout(release, 300);
    await stopped;
    await running;
    assert.equal((await client.get(t.id)).state, "succeeded");
    await assert.rejects(client.request("GET", `/v1/nodes/${nodeId}`), (e) => e.status === 404);
  });

  test("a bad token: run() rejects with an AuthenticationError at once, no retry loop", async () => {
    const w = new Worker({ server: stack.url, token: "wrong", queues: [queueName()], handleSignals: false, logger: null });
    w.task("x", () => 1);
    const t0 = Date.now();
    await assert.rejects(w.run(), (e) => {
      assert.ok(e instanceof AuthenticationError, `${e}`);
      assert.equal(e.status, 401);
      assert.match(e.message, /token was refused/);
      return true;
    });
    assert.ok(Date.now() - t0 < 5_000);
  });

  test("run() without handlers is refused", async () => {
    const w = new Worker({ server: stack.url, token: stack.token, handleSignals: false, logger: null });
    await assert.rejects(w.run(), /no handlers/);
  });
});

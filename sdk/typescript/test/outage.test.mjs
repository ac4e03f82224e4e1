// The worker while the control plane or Redis is away: a server restart during a run,
// Redis paused, fail-over between two replicas, and a Redis that lost everything (the node is
// registered again). Each test has its own Redis and servers.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { Client, Worker } from "../dist/index.js";
import { Muster, Redis, memoryLogger, queueName, until } from "./helpers.mjs";

function startWorker(servers, q, handlers, opts = {}) {
  const logger = memoryLogger();
  const w = new Worker({
    server: servers,
    token: opts.token,
    queues: [q],
    concurrency: opts.concurrency ?? 8,
    handleSignals: false,
    logger,
  });
  for (const [k, h] of Object.entries(handlers)) w.task(k, h);
  const running = w.run();
  running.catch(() => {});
  return { w, logger, running };
}

describe("outages", () => {
  test("a server restart during a run: the worker reconnects and every task succeeds", async () => {
    const redis = await Redis.start();
    const m = await Muster.start(redis);
    const client = new Client({ server: m.url, token: m.token, retries: 10 });
    const q = queueName();
    const { w, logger, running } = startWorker(m.url, q, { work: async (p) => (await delay(20), p * 2) }, { token: m.token });
    try {
      // A short lease TTL: a lease granted just as the server died (its answer lost) comes
      // back soon.
      const ids = await client.submitMany(Array.from({ length: 300 }, (_, i) => ({ kind: "work", payload: i })), { queue: q, timeoutMs: 2_000 });
      await until(() => w.stats.succeeded >= 30, { ms: 30_000, what: "some tasks done" });
      await m.stop("SIGKILL");
      const doneAtKill = w.stats.succeeded;
      await delay(1_500);
      assert.ok(
        logger.lines.some((l) => l.level === "warn"),
        "the worker noticed the outage",
      );
      await m.start();
      for (const id of ids) {
        const d = await client.wait(id, { timeoutMs: 30_000 });
        assert.equal(d.state, "succeeded", JSON.stringify(d));
      }
      assert.equal((await client.get(ids[7])).result, 14);
      assert.ok(w.stats.succeeded > doneAtKill, "work went on after the restart");
      assert.ok(w.nodeId);
    } finally {
      await w.stop();
      await running;
      await m.stop();
      await redis.stop();
    }
  });

  test("Redis paused for 3 s (503s from the server): the worker waits it out and every task succeeds", async () => {
    const redis = await Redis.start();
    const m = await Muster.start(redis);
    const client = new Client({ server: m.url, token: m.token, retries: 20 });
    const q = queueName();
    const { w, logger, running } = startWorker(m.url, q, { work: async (p) => (await delay(5), p) }, { token: m.token });
    try {
      // A lease TTL longer than the pause, and short: a lease granted by a script that ran
      // as Redis resumed, after the server had given up on its answer (503), is lost with
      // that answer and comes back at its expiry (at-least-once), within the wait below.
      const ids = await client.submitMany(Array.from({ length: 200 }, (_, i) => ({ kind: "work", payload: i })), { queue: q, timeoutMs: 5_000 });
      await until(() => w.stats.succeeded >= 20, { ms: 30_000, what: "some tasks done" });
      redis.proc.kill("SIGSTOP");
      await delay(3_000);
      redis.proc.kill("SIGCONT");
      for (const id of ids) assert.equal((await client.wait(id, { timeoutMs: 30_000 })).state, "succeeded");
      assert.ok(logger.lines.some((l) => l.level === "warn" && /503|unavailable|timeout/.test(JSON.stringify(l.fields))), "the outage was seen");
      assert.ok(!logger.lines.some((l) => /registered again/.test(l.msg)), "Redis kept its data: same node");
    } finally {
      redis.proc.kill("SIGCONT");
      await w.stop();
      await running;
      await m.stop();
      await redis.stop();
    }
  });

  test("two replicas: when the first dies the worker fails over to the second", async () => {
    const redis = await Redis.start();
    const a = await Muster.start(redis);
    const b = await Muster.start(redis);
    const client = new Client({ server: [a.url, b.url], token: a.token, retries: 10 });
    const q = queueName();
    const { w, running } = startWorker([a.url, b.url], q, { work: async (p) => (await delay(10), p + 1) }, { token: a.token });
    try {
      const first = await client.submit("work", 1, { queue: q });
      assert.equal((await client.wait(first.id, { timeoutMs: 30_000 })).result, 2);
      await a.stop("SIGKILL");
      const ids = await client.submitMany(Array.from({ length: 50 }, (_, i) => ({ kind: "work", payload: i })), { queue: q });
      for (const id of ids) assert.equal((await client.wait(id, { timeoutMs: 30_000 })).state, "succeeded");
    } finally {
      await w.stop();
      await running;
      await b.stop();
      await redis.stop();
    }
  });

  test("Redis restarted empty: the server forgot the node, the worker registers again and goes on", async () => {
    const redis = await Redis.start();
    const m = await Muster.start(redis);
    const client = new Client({ server: m.url, token: m.token, retries: 10 });
    const q = queueName();
    const { w, logger, running } = startWorker(m.url, q, { work: (p) => p }, { token: m.token });
    try {
      const t = await client.submit("work", "before", { queue: q });
      assert.equal((await client.wait(t.id, { timeoutMs: 30_000 })).result, "before");
      const oldNode = w.nodeId;
      await redis.stop();
      await delay(1_000);
      await redis.start();
      // The server reconnects by itself; submissions work again once it has.
      const u = await until(() => client.submit("work", "after", { queue: q }), { ms: 30_000, every: 200, what: "the server back" });
      const d = await client.wait(u.id, { timeoutMs: 30_000 });
      // On failure the worker's log says where the task went.
      assert.equal(d.state, "succeeded", [JSON.stringify(d), ...logger.lines.map((l) => JSON.stringify(l))].join("\n"));
      assert.equal(d.result, "after");
      assert.notEqual(w.nodeId, oldNode, "a new node id");
      assert.ok(logger.lines.some((l) => /registered again/.test(l.msg)));
    } finally {
      await w.stop();
      await running;
      await m.stop();
      await redis.stop();
    }
  });
});

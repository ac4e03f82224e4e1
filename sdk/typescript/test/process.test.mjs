// Worker processes: kill -9 mid-task, SIGTERM drain (finish, or hand back after the
// grace), and a bad token ending the process with exit code 1.

import assert from "node:assert/strict";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { Client, Worker } from "../dist/index.js";
import { SDK_DIR, memoryLogger, queueName, spawnNode, startStack, until } from "./helpers.mjs";

const FIXTURE = path.join(SDK_DIR, "test", "fixtures", "worker.mjs");
let stack;
let client;
before(async () => {
  stack = await startStack();
  client = new Client({ server: stack.url, token: stack.token });
});
after(async () => stack?.stop());

function worker(queue, env = {}) {
  return spawnNode(FIXTURE, {
    MUSTER_SERVER: stack.url,
    MUSTER_TOKEN: stack.token,
    QUEUE: queue,
    ...env,
  });
}

const startedLine = (p, id) => until(() => p.lines.find((l) => l.startsWith(`started ${id}`)), { ms: 20_000, what: `start of ${id}` });

describe("worker processes", () => {
  test("kill -9 of a worker mid-task: the task finishes on another worker, one accepted result", async () => {
    const q = queueName();
    const a = worker(q, { WORKER_NAME: "A", CONCURRENCY: "1" });
    const t = await client.submit("sleep", { ms: 1_500 }, { queue: q, timeoutMs: 800, maxAttempts: 3 });
    await startedLine(a, t.id);
    a.kill("SIGKILL");
    assert.equal((await a.exited).signal, "SIGKILL");

    const b = new Worker({ server: stack.url, token: stack.token, queues: [q], handleSignals: false, logger: memoryLogger(), name: "B" });
    const seen = [];
    b.task("sleep", async (p, ctx) => {
      seen.push({ attempt: ctx.attempt, fence: ctx.fence });
      await new Promise((r) => setTimeout(r, p.ms / 10));
      return { by: "B", attempt: ctx.attempt, fence: ctx.fence };
    });
    const running = b.run();
    try {
      const d = await client.wait(t.id, { timeoutMs: 30_000 });
      assert.equal(d.state, "succeeded", JSON.stringify(d));
      assert.equal(d.result.by, "B");
      assert.equal(d.attempts, 2, "the killed attempt counts, the second one finished");
      assert.equal(seen.length, 1, "ran once on B");
      assert.equal(d.result.fence, d.fence, "the accepted result is the one of the current lease");
      assert.ok(d.fence > 1);
      await until(() => b.stats.succeeded === 1, { what: "B's report accepted" });
      assert.equal(b.stats.refused, 0);
    } finally {
      await b.stop();
      await running;
    }
  });

  test("SIGTERM drains: running tasks finish, then the process exits 0 and the node is gone", async () => {
    const q = queueName();
    const a = worker(q, { WORKER_NAME: "A", CONCURRENCY: "2" });
    const ids = await client.submitMany(
      [
        { kind: "sleep", payload: { ms: 1_200 } },
        { kind: "sleep", payload: { ms: 1_200 } },
      ],
      { queue: q },
    );
    await Promise.all(ids.map((id) => startedLine(a, id)));
    const nodeId = a.lines.find((l) => l.startsWith("registered ")).split(" ")[1];
    const more = await client.submit("sleep", { ms: 10 }, { queue: q });
    a.kill("SIGTERM");
    const { code } = await a.exited;
    assert.equal(code, 0, a.stderrText);
    assert.ok(a.lines.includes("run resolved"));
    for (const id of ids) {
      const d = await client.get(id);
      assert.equal(d.state, "succeeded", JSON.stringify(d));
      assert.equal(d.result.by, "A");
    }
    // Submitted after the slots were full: not started by the draining worker.
    assert.ok(!a.lines.some((l) => l.startsWith(`started ${more.id}`)));
    assert.ok(["pending", "assigned"].includes((await client.get(more.id)).state));
    await assert.rejects(client.request("GET", `/v1/nodes/${nodeId}`), (e) => e.status === 404);
    await client.cancel(more.id);
  });

  test("SIGTERM with a short grace hands a long task back; another worker finishes it", async () => {
    const q = queueName();
    const a = worker(q, { WORKER_NAME: "A", CONCURRENCY: "2", GRACE_MS: "500" });
    const long = await client.submit("sleep", { ms: 20_000, retryMs: 10 }, { queue: q, maxAttempts: 3, backoff: { initialMs: 10, maxMs: 10 } });
    await startedLine(a, long.id);
    const t0 = Date.now();
    a.kill("SIGTERM");
    const { code } = await a.exited;
    assert.equal(code, 0, a.stderrText);
    assert.ok(Date.now() - t0 < 5_000, "exited soon after the grace");
    const handed = await client.get(long.id);
    assert.ok(["retrying", "pending"].includes(handed.state), JSON.stringify(handed));
    assert.match(handed.error, /shutting down/);

    const b = worker(q, { WORKER_NAME: "B" });
    try {
      const d = await client.wait(long.id, { timeoutMs: 30_000 });
      assert.equal(d.state, "succeeded", JSON.stringify(d));
      assert.equal(d.result.by, "B");
      assert.equal(d.attempts, 2);
    } finally {
      b.kill("SIGKILL");
      await b.exited;
    }
  });

  test("a bad token: the worker process exits 1 at once with a clear error", async () => {
    const a = spawnNode(FIXTURE, { MUSTER_SERVER: stack.url, MUSTER_TOKEN: "definitely-wrong", QUEUE: queueName() });
    const t0 = Date.now();
    const { code } = await a.exited;
    assert.equal(code, 1);
    assert.ok(Date.now() - t0 < 10_000);
    assert.match(a.stderrText, /AuthenticationError/);
    assert.match(a.stderrText, /token was refused/);
    assert.ok(!a.lines.includes("run resolved"));
  });
});

// The client against a real `muster serve`: submissions, reads, waits, lists, cancel,
// retry, delete and the typed errors.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  AuthenticationError,
  Client,
  ConflictError,
  ConnectionError,
  MusterError,
  NotFoundError,
  TimeoutError,
  ValidationError,
} from "../dist/index.js";
import { freePort, queueName, startStack } from "./helpers.mjs";

let stack;
let client;
before(async () => {
  stack = await startStack();
  client = new Client({ server: stack.url, token: stack.token });
});
after(async () => stack?.stop());

describe("Client", () => {
  test("submit stores a pending task with camelCase fields and the options given", async () => {
    const q = queueName();
    const t = await client.submit("add", { a: 1, b: 2 }, { queue: q, maxAttempts: 5, priority: 7, timeoutMs: 4000 });
    assert.match(t.id, new RegExp(`\\.${q}$`));
    assert.equal(t.queue, q);
    assert.equal(t.kind, "add");
    assert.deepEqual(t.payload, { a: 1, b: 2 });
    assert.equal(t.state, "pending");
    assert.equal(t.maxAttempts, 5);
    assert.equal(t.priority, 7);
    assert.equal(t.timeoutMs, 4000);
    assert.equal(t.attempts, 0);
    assert.equal(typeof t.createdAt, "string");
    const got = await client.get(t.id);
    assert.equal(got.id, t.id);
    assert.deepEqual(got.payload, { a: 1, b: 2 });
  });

  test("Client() reads MUSTER_SERVER and MUSTER_TOKEN", async () => {
    const saved = { s: process.env.MUSTER_SERVER, t: process.env.MUSTER_TOKEN };
    process.env.MUSTER_SERVER = stack.url;
    process.env.MUSTER_TOKEN = stack.token;
    try {
      const c = new Client();
      assert.deepEqual(c.servers, [stack.url]);
      const t = await c.submit("noop", null, { queue: queueName() });
      assert.equal(t.state, "pending");
    } finally {
      for (const [k, v] of [["MUSTER_SERVER", saved.s], ["MUSTER_TOKEN", saved.t]]) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  test("submit with delayMs is scheduled, with runAt a Date is accepted", async () => {
    const q = queueName();
    const t = await client.submit("later", {}, { queue: q, delayMs: 60_000 });
    assert.equal(t.state, "scheduled");
    const u = await client.submit("later", {}, { queue: q, runAt: new Date(Date.now() + 3_600_000) });
    assert.equal(u.state, "scheduled");
  });

  test("an idempotency key makes a repeat return the first task", async () => {
    const q = queueName();
    const key = `k-${Math.random()}`;
    const a = await client.submit("once", { n: 1 }, { queue: q, idempotencyKey: key });
    const b = await client.submit("once", { n: 1 }, { queue: q, idempotencyKey: key });
    assert.equal(a.id, b.id);
  });

  test("submitMany returns ids in order, with defaults and per-item fields", async () => {
    const q = queueName();
    const ids = await client.submitMany(
      [
        { kind: "add", payload: { a: 1, b: 2 } },
        { kind: "add", payload: { a: 3, b: 4 }, priority: 9 },
        { kind: "mul", payload: { a: 2, b: 2 }, queue: q },
      ],
      { queue: q, maxAttempts: 2 },
    );
    assert.equal(ids.length, 3);
    const tasks = await Promise.all(ids.map((id) => client.get(id)));
    assert.deepEqual(tasks.map((t) => t.payload), [{ a: 1, b: 2 }, { a: 3, b: 4 }, { a: 2, b: 2 }]);
    assert.deepEqual(tasks.map((t) => t.maxAttempts), [2, 2, 2]);
    assert.deepEqual(tasks.map((t) => t.priority), [0, 9, 0]);
    assert.deepEqual(tasks.map((t) => t.kind), ["add", "add", "mul"]);
  });

  test("submitMany over 10,000 tasks is sent in several calls", async () => {
    const q = queueName();
    const ids = await client.submitMany(
      Array.from({ length: 10_050 }, (_, i) => ({ kind: "n", payload: i })),
      { queue: q },
    );
    assert.equal(ids.length, 10_050);
    assert.equal(new Set(ids).size, 10_050);
    const last = await client.get(ids.at(-1));
    assert.equal(last.payload, 10_049);
  });

  test("list pages through a queue's tasks and iterate walks every page", async () => {
    const q = queueName();
    const ids = await client.submitMany(Array.from({ length: 7 }, (_, i) => ({ kind: "k", payload: i })), { queue: q });
    const page = await client.list({ queue: q, limit: 3 });
    assert.equal(page.items.length, 3);
    assert.ok(page.nextCursor, "a cursor for the next page");
    const all = [];
    for await (const t of client.iterate({ queue: q, limit: 3 })) all.push(t.id);
    assert.deepEqual(new Set(all), new Set(ids));
    const pending = await client.list({ queue: q, state: "pending", kind: "k" });
    assert.equal(pending.items.length, 7);
  });

  test("wait returns the task as it stands at the timeout when it is not finished", async () => {
    const t = await client.submit("nobody-runs-this", {}, { queue: queueName() });
    const t0 = Date.now();
    const w = await client.wait(t.id, { timeoutMs: 300 });
    assert.ok(Date.now() - t0 >= 250, "waited about the timeout");
    assert.equal(w.state, "pending");
  });

  test("cancel ends a pending task; retry sends it back to pending; delete removes it", async () => {
    const t = await client.submit("x", {}, { queue: queueName() });
    const c = await client.cancel(t.id);
    assert.equal(c.state, "cancelled");
    const w = await client.wait(t.id, { timeoutMs: 1000 });
    assert.equal(w.state, "cancelled");
    const r = await client.retry(t.id);
    assert.equal(r.state, "pending");
    await assert.rejects(client.delete(t.id), (e) => e instanceof ConflictError && e.status === 409);
    await client.cancel(t.id);
    await client.delete(t.id);
    await assert.rejects(client.get(t.id), NotFoundError);
  });

  test("errors are typed and carry the problem code, status and detail", async () => {
    await assert.rejects(client.get("01ARZ3NDEKTSV4RRFFQ69G5FAV.nope"), (e) => {
      assert.ok(e instanceof NotFoundError);
      assert.ok(e instanceof MusterError);
      assert.equal(e.status, 404);
      assert.equal(typeof e.code, "string");
      assert.ok(e.detail.length > 0);
      assert.equal(e.transient, false);
      return true;
    });
    await assert.rejects(client.submit("add", {}, { queue: queueName(), priority: 42 }), (e) => {
      assert.ok(e instanceof ValidationError, `${e}`);
      assert.equal(e.status, 422);
      assert.match(e.code, /invalid/);
      assert.match(e.detail, /priority/);
      return true;
    });
    const t = await client.submit("x", {}, { queue: queueName() });
    await assert.rejects(client.retry(t.id), (e) => e instanceof ConflictError && e.status === 409 && e.code.length > 0);
  });

  test("a bad token is an AuthenticationError (401)", async () => {
    const bad = new Client({ server: stack.url, token: "not-a-token" });
    await assert.rejects(bad.submit("x", {}), (e) => {
      assert.ok(e instanceof AuthenticationError, `${e}`);
      assert.equal(e.status, 401);
      assert.ok(e.code);
      return true;
    });
  });

  test("an unreachable server is a ConnectionError after the retries", async () => {
    const port = await freePort();
    const c = new Client({ server: `http://127.0.0.1:${port}`, token: "t", retries: 1 });
    await assert.rejects(c.get("01ARZ3NDEKTSV4RRFFQ69G5FAV.q"), (e) => {
      assert.ok(e instanceof ConnectionError, `${e}`);
      assert.equal(e.status, 0);
      assert.equal(e.transient, true);
      assert.match(e.message, /ECONNREFUSED/);
      return true;
    });
  });

  test("a call with no answer in time is a TimeoutError; a wait stops on its signal", async () => {
    const t = await client.submit("nobody-runs-this", {}, { queue: queueName() });
    const c = new Client({ server: stack.url, token: stack.token, retries: 0 });
    await assert.rejects(c.request("GET", `/v1/tasks/${t.id}/wait?timeout_ms=5000`, undefined, { timeoutMs: 200 }), (e) => {
      assert.ok(e instanceof TimeoutError, `${e}`);
      assert.equal(e.code, "timeout");
      assert.equal(e.transient, true);
      return true;
    });
    const ac = new AbortController();
    const t0 = Date.now();
    setTimeout(() => ac.abort(new Error("enough")), 200);
    await assert.rejects(c.wait(t.id, { timeoutMs: 10_000, signal: ac.signal }), /enough/);
    assert.ok(Date.now() - t0 < 3_000);
  });

  test("several servers: a dead first one is skipped", async () => {
    const port = await freePort();
    const c = new Client({ server: [`http://127.0.0.1:${port}`, stack.url], token: stack.token, retries: 0 });
    const t = await c.submit("x", {}, { queue: queueName() });
    assert.equal(t.state, "pending");
  });

  test("request() reaches any route", async () => {
    const queues = await client.request("GET", "/v1/queues");
    assert.ok(Array.isArray(queues.queues ?? queues.items ?? queues));
  });
});

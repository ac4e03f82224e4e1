// Compiled (not run) by `npm run typecheck`: the issue's example and the typed API, as a
// user's TypeScript project sees them through the package's own name and its .d.ts.
import {
  AuthenticationError,
  Client,
  MusterError,
  NonRetryable,
  type Task,
  type TaskContext,
  TaskStoppedError,
  Worker,
} from "muster-sdk";

export async function issueExample(): Promise<void> {
  const c = new Client(); // MUSTER_SERVER / MUSTER_TOKEN, or new Client({ server, token })
  const t = await c.submit("add", { a: 1, b: 2 }, { queue: "math", maxAttempts: 3 });
  const d = await c.wait(t.id, { timeoutMs: 30000 }); // { id, state, result, error, attempts, ... }
  const ids = await c.submitMany([{ kind: "add", payload: { a: 1, b: 2 } }], { queue: "math" });
  const w = new Worker({ queues: ["math"], concurrency: 64 });
  w.task("add", async (payload, ctx) => ({ sum: payload.a + payload.b }));
  await w.run(); // SIGTERM/SIGINT drain; w.stop() too
  const state: "succeeded" | "failed" | "cancelled" | string = d.state;
  const n: number = d.attempts + ids.length;
  void state, n, d.result, d.error;
}

interface Resize {
  url: string;
  width: number;
}

export function typedHandlers(): Worker {
  const w = new Worker({ queues: ["images"], concurrency: 8, tags: ["gpu"], graceMs: 10_000, logger: null });
  w.task<Resize, { bytes: number }>("resize", async (p, ctx: TaskContext<Resize>) => {
    const width: number = p.width;
    const fence: number = ctx.fence;
    const attempt: number = ctx.attempt;
    await ctx.progress({ step: "download" });
    const res = await fetch(p.url, { signal: ctx.signal });
    if (ctx.cancelled) throw ctx.signal.reason as TaskStoppedError;
    if (!res.ok) throw new NonRetryable(`bad url: ${res.status}`);
    return { bytes: width + fence + attempt };
  });
  w.task("sync", (p: string) => p.toUpperCase());
  return w;
}

export async function errors(c: Client): Promise<Task | undefined> {
  try {
    return await c.get("x");
  } catch (e) {
    if (e instanceof AuthenticationError) return undefined;
    if (e instanceof MusterError) {
      const parts: [number, string, string, boolean] = [e.status, e.code, e.detail, e.transient];
      void parts;
    }
    throw e;
  }
}

/**
 * muster-sdk: submit tasks to muster and run their handlers in this process.
 *
 * ```ts
 * import { Client, Worker, NonRetryable } from "muster-sdk";
 * const c = new Client();
 * const t = await c.submit("add", { a: 1, b: 2 }, { queue: "math" });
 * const w = new Worker({ queues: ["math"], concurrency: 64 });
 * w.task("add", async (payload, ctx) => ({ sum: payload.a + payload.b }));
 * await w.run();
 * ```
 * @module
 */
export { Client, MAX_BATCH } from "./client.js";
export { Worker, TaskContext, LEASE_WAIT_MS, consoleLogger, errorText, } from "./worker.js";
export { MusterError, BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError, ConflictError, PayloadTooLargeError, ValidationError, RateLimitedError, UnavailableError, ServerError, ConnectionError, TimeoutError, NonRetryable, TaskStoppedError, } from "./errors.js";
export { TERMINAL_STATES, } from "./types.js";

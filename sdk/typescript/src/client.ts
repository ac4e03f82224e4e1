/**
 * The client: submit, read, wait for, list, cancel and retry tasks over the HTTP API.
 * @module
 */

import { ConnectionError, MusterError, TimeoutError } from "./errors.js";
import { Backoff, CALL_TIMEOUT_MS, Transport, notSent, resolveServers, resolveToken, sleep } from "./http.js";
import {
  TERMINAL_STATES,
  type ListOptions,
  type NewTask,
  type SubmitManyOptions,
  type SubmitOptions,
  type Task,
  type TaskPage,
  taskFields,
  toTask,
} from "./types.js";

/** Most tasks in one `POST /v1/tasks/batch` (the server's limit). */
export const MAX_BATCH = 10_000;

/** Longest wait the server holds in one `GET /v1/tasks/{id}/wait`. */
const MAX_WAIT_PER_CALL_MS = 60_000;

/** Options of {@link Client}. */
export interface ClientOptions {
  /**
   * Control-plane URL, or several for fail-over (tried in turn when one cannot be
   * connected to). Default: `MUSTER_SERVER` (comma-separated), else http://127.0.0.1:8080.
   */
  server?: string | string[];
  /** Bearer token (role submit, read or admin). Default: `MUSTER_TOKEN`. */
  token?: string;
  /** Timeout of one call, ms (default 15000; waits add their own wait time). */
  timeoutMs?: number;
  /**
   * Retries of a call that failed transiently (no answer, 5xx, 429), with backoff and
   * `Retry-After`. Only calls that are safe to repeat are retried: reads, waits,
   * cancels and submissions that carry an `idempotencyKey`; any call is retried when
   * it never reached a server. Default 2.
   */
  retries?: number;
  /** A `fetch` to send every call with; by default calls go through `node:http(s)`. */
  fetch?: typeof fetch;
}

/** Options of {@link Client.wait}. */
export interface WaitOptions {
  /** Longest wait in ms (default 30000); the task is returned as it stands then. */
  timeoutMs?: number;
  /** Stops waiting (the promise rejects with the signal's reason). */
  signal?: AbortSignal;
}

/** A client of the muster HTTP API. */
export class Client {
  /** @internal */
  readonly transport: Transport;
  /** @internal */
  readonly token: string | undefined;
  private readonly timeoutMs: number;
  private readonly retries: number;

  constructor(options: ClientOptions = {}) {
    this.transport = new Transport(resolveServers(options.server), options.fetch);
    this.token = resolveToken(options.token);
    this.timeoutMs = options.timeoutMs ?? CALL_TIMEOUT_MS;
    this.retries = Math.max(0, options.retries ?? 2);
  }

  /** The server URLs this client uses. */
  get servers(): readonly string[] {
    return this.transport.servers;
  }

  /**
   * Submits one task (`POST /v1/tasks`).
   * @example await client.submit("add", { a: 1, b: 2 }, { queue: "math", maxAttempts: 3 })
   * @returns the stored task (or, for a repeated `uniqueKey` / `idempotencyKey`, the first one).
   * @throws {ValidationError} invalid fields (nothing stored); see {@link MusterError}.
   */
  async submit<P = any>(kind: string, payload?: P, options: SubmitOptions = {}): Promise<Task<P>> {
    const body = taskFields(options, { kind, payload: payload === undefined ? null : payload });
    const headers = options.idempotencyKey ? { "idempotency-key": options.idempotencyKey } : undefined;
    const raw = await this.request<Record<string, unknown>>("POST", "/v1/tasks", body, {
      headers,
      safe: headers !== undefined,
    });
    return toTask(raw) as Task<P>;
  }

  /**
   * Submits many tasks (`POST /v1/tasks/batch`), all validated first and stored all or
   * nothing, 10,000 per call (more are sent in several calls, each all or nothing).
   * `options` are defaults for every item (an item's own fields win).
   * @returns the ids, in the order given.
   */
  async submitMany(tasks: readonly NewTask[], options: SubmitManyOptions = {}): Promise<string[]> {
    const ids: string[] = [];
    const defaults = taskFields(options, {});
    for (let start = 0, n = 0; start < tasks.length; start += MAX_BATCH, n++) {
      const chunk = tasks.slice(start, start + MAX_BATCH).map((t) => {
        const { kind, payload, ...rest } = t;
        return taskFields(rest, { ...defaults, kind, payload: payload === undefined ? null : payload });
      });
      let headers: Record<string, string> | undefined;
      if (options.idempotencyKey) {
        const key = tasks.length > MAX_BATCH ? `${options.idempotencyKey}.${n}` : options.idempotencyKey;
        headers = { "idempotency-key": key };
      }
      const reply = await this.request<{ ids: string[] }>("POST", "/v1/tasks/batch", { tasks: chunk }, {
        headers,
        safe: headers !== undefined,
      });
      for (const id of reply.ids) ids.push(id);
    }
    return ids;
  }

  /**
   * Reads a task.
   * @throws {NotFoundError} no such task (or it was deleted after its retention).
   */
  async get(id: string): Promise<Task> {
    return toTask(await this.request("GET", `/v1/tasks/${encodeURIComponent(id)}`));
  }

  /**
   * Waits until the task is terminal (`succeeded`, `failed`, `cancelled`) or
   * `timeoutMs` passed, and returns it as it stands then: check `state`.
   */
  async wait(id: string, options: WaitOptions = {}): Promise<Task> {
    const total = Math.max(0, options.timeoutMs ?? 30_000);
    const deadline = Date.now() + total;
    const path = `/v1/tasks/${encodeURIComponent(id)}/wait?timeout_ms=`;
    for (;;) {
      const left = Math.max(0, deadline - Date.now());
      const chunk = Math.min(left, MAX_WAIT_PER_CALL_MS);
      const task = toTask(
        await this.request("GET", path + Math.floor(chunk), undefined, {
          timeoutMs: chunk + this.timeoutMs,
          signal: options.signal,
          safe: true,
        }),
      );
      if (TERMINAL_STATES.has(task.state) || Date.now() >= deadline) return task;
    }
  }

  /** A page of tasks, newest first within a state (`GET /v1/tasks`). */
  async list(options: ListOptions = {}): Promise<TaskPage> {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(options)) if (v !== undefined && v !== null) q.set(k, String(v));
    const qs = q.toString();
    const raw = await this.request<{ items: Record<string, unknown>[]; next_cursor?: string | null }>(
      "GET",
      `/v1/tasks${qs ? `?${qs}` : ""}`,
    );
    return { items: raw.items.map(toTask), nextCursor: raw.next_cursor ?? null };
  }

  /** Every task matching the filter, page after page. */
  async *iterate(options: Omit<ListOptions, "cursor"> = {}): AsyncGenerator<Task, void, undefined> {
    let cursor: string | undefined;
    do {
      const page = await this.list({ ...options, cursor });
      yield* page.items;
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
  }

  /**
   * Cancels a task. A running one is stopped by its worker (its handler's `ctx.signal`
   * aborts); until then the answer shows `cancelRequested`.
   * @throws {ConflictError} already succeeded or failed.
   */
  async cancel(id: string): Promise<Task> {
    return toTask(await this.request("POST", `/v1/tasks/${encodeURIComponent(id)}/cancel`, undefined, { safe: true }));
  }

  /**
   * Sends a failed or cancelled task back to pending, its attempts reset.
   * @throws {ConflictError} the task is not failed or cancelled.
   */
  async retry(id: string): Promise<Task> {
    return toTask(await this.request("POST", `/v1/tasks/${encodeURIComponent(id)}/retry`));
  }

  /**
   * Deletes a finished task.
   * @throws {ConflictError} the task is not finished.
   */
  async delete(id: string): Promise<void> {
    await this.request("DELETE", `/v1/tasks/${encodeURIComponent(id)}`);
  }

  /**
   * Any API call: `path` under the server (e.g. `/v1/queues`), `body` sent as JSON.
   * The answer is returned as the server wrote it (snake_case).
   */
  async request<T = any>(
    method: string,
    path: string,
    body?: unknown,
    options: { headers?: Record<string, string> | undefined; timeoutMs?: number; signal?: AbortSignal | undefined; safe?: boolean } = {},
  ): Promise<T> {
    const safe = options.safe ?? method === "GET";
    const text = body === undefined ? undefined : JSON.stringify(body);
    const backoff = new Backoff(200, 5_000);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.transport.call<T>(method, path, {
          token: this.token,
          body: text,
          headers: options.headers,
          timeoutMs: options.timeoutMs ?? this.timeoutMs,
          signal: options.signal,
        });
      } catch (e) {
        if (!(e instanceof MusterError) || attempt >= this.retries || !e.transient) throw e;
        const neverSent = e instanceof ConnectionError && !(e instanceof TimeoutError) && notSent(e.cause);
        if (!safe && !neverSent) throw e;
        await sleep(e.retryAfterMs ?? backoff.next(), options.signal);
        if (options.signal?.aborted) throw options.signal.reason;
      }
    }
  }
}

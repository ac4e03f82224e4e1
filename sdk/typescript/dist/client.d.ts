/**
 * The client: submit, read, wait for, list, cancel and retry tasks over the HTTP API.
 * @module
 */
import { type ListOptions, type NewTask, type SubmitManyOptions, type SubmitOptions, type Task, type TaskPage } from "./types.js";
/** Most tasks in one `POST /v1/tasks/batch` (the server's limit). */
export declare const MAX_BATCH = 10000;
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
export declare class Client {
    private readonly timeoutMs;
    private readonly retries;
    constructor(options?: ClientOptions);
    /** The server URLs this client uses. */
    get servers(): readonly string[];
    /**
     * Submits one task (`POST /v1/tasks`).
     * @example await client.submit("add", { a: 1, b: 2 }, { queue: "math", maxAttempts: 3 })
     * @returns the stored task (or, for a repeated `uniqueKey` / `idempotencyKey`, the first one).
     * @throws {ValidationError} invalid fields (nothing stored); see {@link MusterError}.
     */
    submit<P = any>(kind: string, payload?: P, options?: SubmitOptions): Promise<Task<P>>;
    /**
     * Submits many tasks (`POST /v1/tasks/batch`), all validated first and stored all or
     * nothing, 10,000 per call (more are sent in several calls, each all or nothing).
     * `options` are defaults for every item (an item's own fields win).
     * @returns the ids, in the order given.
     */
    submitMany(tasks: readonly NewTask[], options?: SubmitManyOptions): Promise<string[]>;
    /**
     * Reads a task.
     * @throws {NotFoundError} no such task (or it was deleted after its retention).
     */
    get(id: string): Promise<Task>;
    /**
     * Waits until the task is terminal (`succeeded`, `failed`, `cancelled`) or
     * `timeoutMs` passed, and returns it as it stands then: check `state`.
     */
    wait(id: string, options?: WaitOptions): Promise<Task>;
    /** A page of tasks, newest first within a state (`GET /v1/tasks`). */
    list(options?: ListOptions): Promise<TaskPage>;
    /** Every task matching the filter, page after page. */
    iterate(options?: Omit<ListOptions, "cursor">): AsyncGenerator<Task, void, undefined>;
    /**
     * Cancels a task. A running one is stopped by its worker (its handler's `ctx.signal`
     * aborts); until then the answer shows `cancelRequested`.
     * @throws {ConflictError} already succeeded or failed.
     */
    cancel(id: string): Promise<Task>;
    /**
     * Sends a failed or cancelled task back to pending, its attempts reset.
     * @throws {ConflictError} the task is not failed or cancelled.
     */
    retry(id: string): Promise<Task>;
    /**
     * Deletes a finished task.
     * @throws {ConflictError} the task is not finished.
     */
    delete(id: string): Promise<void>;
    /**
     * Any API call: `path` under the server (e.g. `/v1/queues`), `body` sent as JSON.
     * The answer is returned as the server wrote it (snake_case).
     */
    request<T = any>(method: string, path: string, body?: unknown, options?: {
        headers?: Record<string, string> | undefined;
        timeoutMs?: number;
        signal?: AbortSignal | undefined;
        safe?: boolean;
    }): Promise<T>;
}

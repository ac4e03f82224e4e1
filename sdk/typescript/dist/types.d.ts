/**
 * Shapes of the API as the SDK shows them: camelCase fields over the server's
 * snake_case JSON (only top-level field names change; payloads, results and progress
 * stay exactly as they are).
 * @module
 */
/** Lifecycle state of a task. */
export type TaskState = "blocked" | "scheduled" | "pending" | "assigned" | "running" | "retrying" | "succeeded" | "failed" | "cancelled";
/** States a task does not leave by itself. */
export declare const TERMINAL_STATES: ReadonlySet<TaskState>;
/** A task record (`GET /v1/tasks/{id}`), camelCased. */
export interface Task<P = any, R = any> {
    /** `<ULID>.<queue>`. */
    id: string;
    queue: string;
    kind: string;
    payload: P;
    /** 0..=9, higher first. */
    priority: number;
    state: TaskState;
    /** Attempts started so far. */
    attempts: number;
    maxAttempts: number;
    /** Lease TTL, ms. */
    timeoutMs: number;
    maxRunMs?: number | null;
    requires: string[];
    /** Fence of the current or last lease (0 before the first). */
    fence: number;
    /** Result of the accepted completion. */
    result?: R | null;
    /** Last error. */
    error?: string | null;
    /** Last progress reported by a handler. */
    progress?: unknown;
    /** Node that holds or last held the task. */
    node?: string | null;
    cancelRequested?: boolean;
    batch?: string | null;
    origin?: string | null;
    dependsOn?: string[];
    onDependencyFailure?: string | null;
    uniqueKey?: string | null;
    concurrencyKey?: string | null;
    concurrencyLimit?: number | null;
    resultSchema?: unknown;
    /** RFC 3339 times. */
    createdAt: string;
    runAt?: string | null;
    startedAt?: string | null;
    finishedAt?: string | null;
    leaseExpiresAt?: string | null;
}
/** Retry backoff: exponential from `initialMs`, capped at `maxMs`, with jitter. */
export interface BackoffOptions {
    initialMs: number;
    maxMs: number;
}
/** Fields of a submission besides kind and payload (all optional; server defaults apply). */
export interface TaskOptions {
    /** Queue, `default` when absent. */
    queue?: string;
    /** 0..=9, higher first (default 0). */
    priority?: number;
    /** Not before this time (a Date or RFC 3339 text). */
    runAt?: Date | string;
    /** Not before now + this many ms. */
    delayMs?: number;
    /** Attempts before the task fails for good (default 3). */
    maxAttempts?: number;
    backoff?: BackoffOptions;
    /** Lease TTL in ms (default 30000); workers renew it while the handler runs. */
    timeoutMs?: number;
    /** Hard limit of one attempt's run time, ms. */
    maxRunMs?: number;
    /** Node tags that must all be present on the node. */
    requires?: string[];
    /** Task ids that must succeed first. */
    dependsOn?: string[];
    /** What a blocked task does when a dependency fails (`fail` by default). */
    onDependencyFailure?: string;
    /** A second submission with the same key (while the first is live) returns the first. */
    uniqueKey?: string;
    uniqueTtlMs?: number;
    /** At most `concurrencyLimit` tasks with this key run at once. */
    concurrencyKey?: string;
    concurrencyLimit?: number;
    /** How long a finished task is kept, ms (default 7 days). */
    retentionMs?: number;
    /** JSON Schema of the expected result (human tasks). */
    resultSchema?: Record<string, unknown>;
}
/** Options of {@link Client.submit}: task fields plus the request's own. */
export interface SubmitOptions extends TaskOptions {
    /** `Idempotency-Key`: a repeat returns the first answer and creates nothing. */
    idempotencyKey?: string;
}
/** One item of {@link Client.submitMany}. */
export interface NewTask<P = any> extends TaskOptions {
    kind: string;
    payload?: P;
}
/** Options of {@link Client.submitMany}: defaults for every item plus the request's own. */
export interface SubmitManyOptions extends TaskOptions {
    /**
     * `Idempotency-Key` of the call; with more than 10,000 tasks (several calls) the
     * n-th call sends `<key>.<n>`.
     */
    idempotencyKey?: string;
}
/** Filter and page of {@link Client.list}. */
export interface ListOptions {
    queue?: string;
    state?: TaskState;
    kind?: string;
    /** Page size, 1 to 1000 (default 100). */
    limit?: number;
    /** `nextCursor` of the previous page. */
    cursor?: string;
}
/** A page of {@link Client.list}. */
export interface TaskPage {
    items: Task[];
    /** Pass as `cursor` for the next page; absent on the last one. */
    nextCursor?: string | null;
}
/** `max_attempts` → `maxAttempts`. */
export declare function camel(k: string): string;
/** `maxAttempts` → `max_attempts`. */
export declare function snake(k: string): string;
/** A server task record with camelCase field names (values untouched). */
export declare function toTask(raw: Record<string, unknown>): Task;
/** Task options as the server's JSON fields. */
export declare function taskFields(opts: TaskOptions | undefined, into: Record<string, unknown>): Record<string, unknown>;

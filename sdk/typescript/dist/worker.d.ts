/**
 * The worker: runs handlers in this process over the HTTP agent protocol, like
 * `muster agent` (src/agent/mod.rs is the reference) but with the handler in-process.
 *
 * Shape:
 * - register a node (queues, tags, capacity = concurrency, name) with the token;
 * - one lease loop: waits for a free slot (no polling while full), then long-polls
 *   `POST /v1/nodes/{id}/lease` for as many tasks as there are free slots;
 * - handlers start at once on the leased tasks; their outcomes are queued as
 *   pre-serialized report items;
 * - the report flusher: sends what is queued in one `POST /v1/nodes/{id}/reports`
 *   call at a time (outcomes arriving meanwhile go together in the next), and asks in
 *   it for as many new tasks as there are free slots (`lease_max`): a busy worker
 *   takes its next tasks with its reports. The long-poll is for the moments nothing
 *   waits to be reported;
 * - one renewal ticker for all running tasks: the leases past a third of their TTL
 *   are renewed together, in one `POST /v1/nodes/{id}/extend` per tick (progress goes
 *   with `POST /v1/tasks/{id}/extend`, the only per-task call);
 * - heartbeats, whose `cancel` list (and an extend's `cancel_requested`) aborts the
 *   handler's `ctx.signal` and reports the task cancelled;
 * - drain on SIGTERM/SIGINT or `stop()`: no more leases, the node's inbox handed back,
 *   `graceMs` for running handlers, then the rest handed back (failed, retryable),
 *   reports flushed, the node deregistered.
 *
 * The happy path of a task makes no HTTP call of its own: it arrives in a lease batch
 * and leaves in a report batch.
 * @module
 */
import { type StopReason } from "./errors.js";
import { type Task } from "./types.js";
/** Long-poll asked of `lease`, ms (the Rust agent's). */
export declare const LEASE_WAIT_MS = 20000;
/** Where the worker says what it does. Each method takes a message and optional fields. */
export interface Logger {
    debug(msg: string, fields?: Record<string, unknown>): void;
    info(msg: string, fields?: Record<string, unknown>): void;
    warn(msg: string, fields?: Record<string, unknown>): void;
    error(msg: string, fields?: Record<string, unknown>): void;
}
declare const LEVELS: {
    readonly debug: 10;
    readonly info: 20;
    readonly warn: 30;
    readonly error: 40;
    readonly silent: 100;
};
type Level = keyof typeof LEVELS;
/** The default logger: one line per event on stderr, from `MUSTER_LOG` level (default `info`). */
export declare function consoleLogger(level?: Level): Logger;
/** Options of {@link Worker}. */
export interface WorkerOptions {
    /** Queues served (default `["default"]`). */
    queues?: string[];
    /** Handlers run at once; the node's capacity (default 10, at most 10,000). */
    concurrency?: number;
    /**
     * Tasks leased beyond `concurrency`, waiting in the worker for a free slot (default
     * 0: leases are sized to the free slots). Their leases are renewed while they wait,
     * so short tasks that end in waves start at once; prefetched tasks are held from
     * other workers meanwhile, so keep it small for long tasks. The node registers
     * `concurrency + prefetch`.
     */
    prefetch?: number;
    /** Control-plane URL(s), tried in turn on connection errors. Default `MUSTER_SERVER`. */
    server?: string | string[];
    /** Token allowed to register nodes (role agent or admin). Default `MUSTER_TOKEN`. */
    token?: string;
    /** Node name (default `<hostname>-<pid>`). */
    name?: string;
    /** Node tags, matched against tasks' `requires`. */
    tags?: string[];
    /** Time running handlers get after a drain starts, ms (default 30000). */
    graceMs?: number;
    /** Drain on SIGTERM and SIGINT while `run()` runs (default true); a second signal ends the grace. */
    handleSignals?: boolean;
    /** Long-poll of each lease call, ms (default 20000, at most 60000). */
    leaseWaitMs?: number;
    /** How long the first registration retries an unreachable server, ms (default 30000). */
    startupTimeoutMs?: number;
    /** Where to log; `null` for nothing. Default: {@link consoleLogger}. */
    logger?: Logger | null;
    /** A `fetch` to send every call with; by default calls go through `node:http(s)`. */
    fetch?: typeof fetch;
}
/** A handler: gets the payload and the context, returns the result (any JSON) or throws. */
export type Handler<P = any, R = unknown> = (payload: P, ctx: TaskContext<P>) => R | Promise<R>;
/** Counters of a worker's run. */
export interface WorkerStats {
    /** Handlers started. */
    started: number;
    /** Successes reported and accepted. */
    succeeded: number;
    /** Failures reported and accepted (including cancels and hand-backs). */
    failed: number;
    /** Reports the server refused (lease lost, too large...). */
    refused: number;
    /** Report calls made. */
    reportCalls: number;
    /** Lease calls that granted at least one task. */
    leaseCalls: number;
    /** Lease renewals sent. */
    renewals: number;
}
/**
 * What a handler knows about the attempt it runs: ids, the fence number, progress
 * reports and cancellation.
 */
export declare class TaskContext<P = any> {
    /** Task id. */
    readonly taskId: string;
    /** Attempt number, 1-based. */
    readonly attempt: number;
    /** Fence number of this lease: pass it to stores you write to, so stale writers can be refused. */
    readonly fence: number;
    /** Task kind (handler name). */
    readonly kind: string;
    /** Queue. */
    readonly queue: string;
    /** Attempts allowed. */
    readonly maxAttempts: number;
    /** Node this worker registered as. */
    readonly nodeId: string;
    /** The whole task record as leased (state `running`). */
    get task(): Task<P>;
    /**
     * Aborts when the result is no longer wanted: the task was cancelled, its lease was
     * lost, its `maxRunMs` passed, or the worker's grace ran out. `signal.reason` is a
     * {@link TaskStoppedError}. Pass it to fetch, timers and child processes.
     */
    get signal(): AbortSignal;
    /** True once the signal aborted (see {@link TaskContext.stopReason} for why). */
    get cancelled(): boolean;
    /** Why the task is being stopped, if it is. */
    get stopReason(): StopReason | undefined;
    /** Throws the signal's reason when the task is being stopped. */
    throwIfCancelled(): void;
    /**
     * Records progress (any JSON; shown as the task's `progress`) and renews the lease.
     * Calls made while one is in flight are coalesced: the last value wins. Resolves once
     * sent; never rejects (progress is best effort; a lost lease aborts the signal).
     */
    progress(value: unknown): Promise<void>;
    private _sendProgress;
}
/**
 * A worker: register handlers with {@link Worker.task}, then `await worker.run()`.
 * @example
 * const w = new Worker({ queues: ["math"], concurrency: 64 });
 * w.task("add", async (payload, ctx) => ({ sum: payload.a + payload.b }));
 * await w.run();
 */
export declare class Worker {
    readonly queues: readonly string[];
    readonly concurrency: number;
    /** Tasks leased beyond `concurrency`, waiting for a slot. */
    readonly prefetch: number;
    readonly name: string;
    readonly tags: readonly string[];
    readonly graceMs: number;
    /** Counters, updated as the worker runs. */
    readonly stats: WorkerStats;
    private readonly transport;
    private readonly token;
    private readonly log;
    private readonly handleSignals;
    private readonly leaseWaitMs;
    private readonly startupTimeoutMs;
    private readonly handlers;
    private session;
    private reregistering;
    /** Tasks whose lease this worker holds and has not reported yet, by id. */
    private readonly running;
    /** Handlers started and not settled: the slots in use (a stopped handler keeps its slot until it settles). */
    private busy;
    /** Handlers running now (at most `concurrency`). */
    private executing;
    /** Prefetched tasks waiting for a slot, oldest first. */
    private waiting;
    private slotWaiter;
    private idleWaiter;
    /** Pre-serialized report items waiting to be sent, and what each was about. */
    private reports;
    private reportMeta;
    /** Report calls out now, and the reports they carry. */
    private flushesOut;
    private reportsOut;
    private flushScheduled;
    private flushIdle;
    /** Slots held for the leases asked of calls out (report calls and the long-poll). */
    private reserved;
    /** Cleared when the server refuses `lease_max` (one older than this SDK). */
    private leaseWithReports;
    private runPromise;
    private stopping;
    private forceStop;
    private forced;
    private signalled;
    private fatal;
    /** Aborts sleeps once the drain starts. */
    private readonly stopCtl;
    /** Aborts the lease long-poll in flight (drain, or a new registration). */
    private leaseCtl;
    /** Aborts the heartbeat loop at the very end. */
    private readonly endCtl;
    private ticker;
    private tickMs;
    /** A `POST /v1/nodes/{id}/extend` is out (one at a time). */
    private batchRenewing;
    constructor(options?: WorkerOptions);
    /**
     * Registers the handler of a kind. A handler returns the result (any JSON value;
     * `undefined` is `null`) or throws: {@link NonRetryable} fails the task for good, any
     * other error is a retryable failure (its message and stack top become the error).
     */
    task<P = any, R = unknown>(kind: string, handler: Handler<P, R>): this;
    /** The node id, once registered. */
    get nodeId(): string | undefined;
    /** Handlers running now (prefetched tasks waiting for a slot not counted). */
    get active(): number;
    /**
     * Runs until {@link Worker.stop} or SIGTERM/SIGINT, then drains. Resolves after the
     * drain; rejects when the worker cannot go on: a refused token
     * ({@link AuthenticationError}, {@link PermissionDeniedError}) or a server that stayed
     * unreachable for `startupTimeoutMs` at start. Run at a module's top level, a rejection
     * ends the process with exit code 1.
     */
    run(): Promise<void>;
    /** Starts the drain (as SIGTERM does); resolves when `run()` has finished. */
    stop(): Promise<void>;
    private beginStop;
    private runInner;
    private registerBody;
    private register;
    /** First registration: retries an unreachable or overloaded server for a while. */
    private registerFirst;
    /**
     * Registers again after the server forgot `staleId` (its Redis lost the node).
     * Concurrent callers share one attempt. A refused token is fatal.
     */
    private reregister;
    private failFatally;
    private deregister;
    private wakeLeaser;
    private leaseLoop;
    /** Slots neither in use nor held for a call out. */
    private freeSlots;
    /** Starts the leased tasks (those granted while stopping, or beyond the slots, go back). */
    private startLeases;
    private start;
    /** Runs a leased task's handler in a free slot. */
    private execute;
    /** A handler settled: report its outcome (unless it was stopped) and free its slot. */
    private settle;
    /** The lease is done with: queue its report (if any) and stop renewing it. */
    private finishTask;
    /** Stops a running task: aborts its signal and reports what the reason calls for. */
    private stopTask;
    private retick;
    private tick;
    /**
     * Renews many leases in one call (`POST /v1/nodes/{id}/extend`); each lease refused
     * stops its task, a cancel requested stops its task. Never rejects.
     */
    private renewMany;
    /** A renewal sent at `sent` went through: the new deadline, the next renewal. */
    private renewed;
    /**
     * A renewal got no answer (or a transient one): the task stops when its lease ran out,
     * else the renewal is retried soon, well inside what is left. True when retried.
     */
    private renewalFailed;
    private heartbeatLoop;
    private queueReport;
    /** Most reports (and leases asked) of one report call: the slots' share of a call. */
    private reportChunk;
    /** Starts report calls for what is queued, while fewer than {@link REPORT_CALLS} are out. */
    private flush;
    /**
     * One report call (retried with backoff while the server or Redis is away), asking
     * for as many new tasks as there are free slots. Never rejects.
     */
    private sendReports;
    private accountReports;
    private drain;
    /** Waits until every queued report was sent (or `ms` passed). */
    private flushAll;
}
/** A thrown value as the task's error: name, message, the top of the stack, the cause. */
export declare function errorText(e: unknown): string;
export {};

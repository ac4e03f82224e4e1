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
import { hostname } from "node:os";
import { AuthenticationError, ConnectionError, MusterError, NonRetryable, NotFoundError, PermissionDeniedError, TaskStoppedError, } from "./errors.js";
import { Backoff, CALL_TIMEOUT_MS, Transport, resolveServers, resolveToken, sleep } from "./http.js";
import { toTask } from "./types.js";
/** Long-poll asked of `lease`, ms (the Rust agent's). */
export const LEASE_WAIT_MS = 20_000;
/** Most leases one call may ask for (the server's limit). */
const MAX_LEASE = 1_000;
/**
 * Report calls out at once, each with at most 1/REPORT_CALLS of the slots' reports and
 * leases. `scripts/bench-sdk -n 30000 --cases typescript`, runs alternated on one
 * machine: 2026-12-02, one call 7,866-8,165/s, two 9,396-10,635/s, three 8,139-8,860/s;
 * 2026-12-03 (after the lean lease), one 7,726-9,390/s, two 9,425-10,563/s (+12..22%),
 * for about 15 µs more worker CPU per task. When Redis pauses, a report call's leases
 * can be lost with its 503 answer and come back only at their TTL, with one call out
 * as with two; test/outage.test.mjs passed 6 runs of 6 with two (3 beside a full cargo test).
 * See docs/benchmarks.md.
 */
const REPORT_CALLS = 2;
/** Most reports one call may carry (the server's limit). */
const MAX_REPORT_BATCH = 10_000;
/** Body size a report batch is kept under (the server takes 32 MiB). */
const MAX_REPORT_BYTES = 16 * 1024 * 1024;
/** Largest result the server stores (`MAX_PAYLOAD`). */
const MAX_RESULT_BYTES = 1024 * 1024;
/** How long a batch of reports is retried before it is given up. */
const REPORT_RETRY_FOR_MS = 300_000;
/** How long the final flush of reports may take after the drain. */
const FINAL_FLUSH_MS = 30_000;
/** Most leases renewed by one `POST /v1/nodes/{id}/extend` (the route's limit). */
const MAX_EXTEND_BATCH = 1_000;
/** After a signal's drain, how long abandoned handlers may keep the process alive. */
const EXIT_AFTER_DRAIN_MS = 1_000;
/** Heartbeat interval when the server gives none. */
const DEFAULT_HEARTBEAT_MS = 5_000;
/** Longest error text sent (the server keeps 16 KiB). */
const MAX_ERROR_CHARS = 8_192;
/** Stack frames kept in an error text. */
const STACK_FRAMES = 12;
const CANCELLED_ERROR = "cancelled";
const SHUTDOWN_ERROR = "worker shutting down";
const LEVELS = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };
/** The default logger: one line per event on stderr, from `MUSTER_LOG` level (default `info`). */
export function consoleLogger(level = process.env.MUSTER_LOG || "info") {
    const min = LEVELS[level] ?? LEVELS.info;
    const line = (lvl) => (msg, fields) => {
        if (LEVELS[lvl] < min)
            return;
        let s = `${new Date().toISOString()} ${lvl.toUpperCase().padEnd(5)} muster-sdk: ${msg}`;
        if (fields)
            for (const [k, v] of Object.entries(fields))
                s += ` ${k}=${typeof v === "string" ? v : JSON.stringify(v)}`;
        process.stderr.write(s + "\n");
    };
    return { debug: line("debug"), info: line("info"), warn: line("warn"), error: line("error") };
}
const SILENT = { debug() { }, info() { }, warn() { }, error() { } };
/**
 * What a handler knows about the attempt it runs: ids, the fence number, progress
 * reports and cancellation.
 */
export class TaskContext {
    /** Task id. */
    taskId;
    /** Attempt number, 1-based. */
    attempt;
    /** Fence number of this lease: pass it to stores you write to, so stale writers can be refused. */
    fence;
    /** Task kind (handler name). */
    kind;
    /** Queue. */
    queue;
    /** Attempts allowed. */
    maxAttempts;
    /** Node this worker registered as. */
    nodeId;
    /** @internal */ _raw;
    /** @internal */ _worker;
    /** @internal */ _ttlMs;
    /** @internal */ _renewAt;
    /** @internal */ _deadline;
    /** @internal */ _renewing = false;
    /** @internal */ _finished = false;
    /** @internal */ _settled = false;
    /** @internal Prefetched, waiting for a free slot. */ _queued = false;
    /** @internal Its handler was started. */ _ran = false;
    /** @internal */ _stop;
    /** @internal */ _controller;
    /** @internal */ _timer;
    /** @internal */ _progress;
    /** @internal */ _progressDirty = false;
    /** @internal */ _progressSending;
    /** @internal */
    constructor(worker, lease, nodeId, now) {
        const t = lease.task;
        this._worker = worker;
        this._raw = lease;
        this.taskId = t.id;
        this.attempt = t.attempts;
        this.fence = lease.fence;
        this.kind = t.kind;
        this.queue = t.queue;
        this.maxAttempts = t.max_attempts;
        this.nodeId = nodeId;
        this._ttlMs = t.timeout_ms > 0 ? t.timeout_ms : 30_000;
        this._renewAt = now + Math.max(this._ttlMs / 3, 20);
        this._deadline = now + this._ttlMs;
    }
    /** The whole task record as leased (state `running`). */
    get task() {
        return toTask(this._raw.task);
    }
    /**
     * Aborts when the result is no longer wanted: the task was cancelled, its lease was
     * lost, its `maxRunMs` passed, or the worker's grace ran out. `signal.reason` is a
     * {@link TaskStoppedError}. Pass it to fetch, timers and child processes.
     */
    get signal() {
        if (!this._controller) {
            this._controller = new AbortController();
            if (this._stop)
                this._controller.abort(this._reason());
        }
        return this._controller.signal;
    }
    /** True once the signal aborted (see {@link TaskContext.stopReason} for why). */
    get cancelled() {
        return this._stop !== undefined;
    }
    /** Why the task is being stopped, if it is. */
    get stopReason() {
        return this._stop;
    }
    /** Throws the signal's reason when the task is being stopped. */
    throwIfCancelled() {
        if (this._stop)
            throw this._reason();
    }
    /**
     * Records progress (any JSON; shown as the task's `progress`) and renews the lease.
     * Calls made while one is in flight are coalesced: the last value wins. Resolves once
     * sent; never rejects (progress is best effort; a lost lease aborts the signal).
     */
    progress(value) {
        this._progress = value === undefined ? null : value;
        this._progressDirty = true;
        if (!this._progressSending)
            this._progressSending = this._sendProgress();
        return this._progressSending;
    }
    async _sendProgress() {
        try {
            while (this._progressDirty && !this._finished) {
                this._progressDirty = false;
                await this._worker._renew(this, this._progress, true);
            }
        }
        finally {
            this._progressSending = undefined;
        }
    }
    /** @internal */
    _reason() {
        return new TaskStoppedError(this.taskId, this._stop ?? "cancelled");
    }
}
/**
 * A worker: register handlers with {@link Worker.task}, then `await worker.run()`.
 * @example
 * const w = new Worker({ queues: ["math"], concurrency: 64 });
 * w.task("add", async (payload, ctx) => ({ sum: payload.a + payload.b }));
 * await w.run();
 */
export class Worker {
    queues;
    concurrency;
    /** Tasks leased beyond `concurrency`, waiting for a slot. */
    prefetch;
    name;
    tags;
    graceMs;
    /** Counters, updated as the worker runs. */
    stats = {
        started: 0,
        succeeded: 0,
        failed: 0,
        refused: 0,
        reportCalls: 0,
        leaseCalls: 0,
        renewals: 0,
    };
    transport;
    token;
    log;
    handleSignals;
    leaseWaitMs;
    startupTimeoutMs;
    handlers = new Map();
    session;
    reregistering;
    /** Tasks whose lease this worker holds and has not reported yet, by id. */
    running = new Map();
    /** Handlers started and not settled: the slots in use (a stopped handler keeps its slot until it settles). */
    busy = 0;
    /** Handlers running now (at most `concurrency`). */
    executing = 0;
    /** Prefetched tasks waiting for a slot, oldest first. */
    waiting = [];
    slotWaiter;
    idleWaiter;
    /** Pre-serialized report items waiting to be sent, and what each was about. */
    reports = [];
    reportMeta = [];
    /** Report calls out now, and the reports they carry. */
    flushesOut = 0;
    reportsOut = 0;
    flushScheduled = false;
    flushIdle;
    /** Slots held for the leases asked of calls out (report calls and the long-poll). */
    reserved = 0;
    /** Cleared when the server refuses `lease_max` (one older than this SDK). */
    leaseWithReports = true;
    runPromise;
    stopping = false;
    forceStop;
    forced = false;
    signalled = false;
    fatal;
    /** Aborts sleeps once the drain starts. */
    stopCtl = new AbortController();
    /** Aborts the lease long-poll in flight (drain, or a new registration). */
    leaseCtl;
    /** Aborts the heartbeat loop at the very end. */
    endCtl = new AbortController();
    ticker;
    tickMs = 1_000;
    /** A `POST /v1/nodes/{id}/extend` is out (one at a time). */
    batchRenewing = false;
    constructor(options = {}) {
        this.queues = options.queues && options.queues.length > 0 ? [...options.queues] : ["default"];
        const c = options.concurrency ?? 10;
        if (!Number.isInteger(c) || c < 1 || c > 10_000)
            throw new RangeError("concurrency must be an integer from 1 to 10000");
        this.concurrency = c;
        const p = options.prefetch ?? 0;
        if (!Number.isInteger(p) || p < 0 || c + p > 10_000) {
            throw new RangeError("prefetch must be an integer from 0, with concurrency + prefetch at most 10000");
        }
        this.prefetch = p;
        this.name = options.name?.trim() || `${hostname()}-${process.pid}`;
        this.tags = options.tags ? [...options.tags] : [];
        this.graceMs = Math.max(0, options.graceMs ?? 30_000);
        this.handleSignals = options.handleSignals ?? true;
        this.leaseWaitMs = Math.min(60_000, Math.max(0, options.leaseWaitMs ?? LEASE_WAIT_MS));
        this.startupTimeoutMs = Math.max(0, options.startupTimeoutMs ?? 30_000);
        this.log = options.logger === null ? SILENT : (options.logger ?? consoleLogger());
        this.transport = new Transport(resolveServers(options.server), options.fetch);
        this.token = resolveToken(options.token);
    }
    /**
     * Registers the handler of a kind. A handler returns the result (any JSON value;
     * `undefined` is `null`) or throws: {@link NonRetryable} fails the task for good, any
     * other error is a retryable failure (its message and stack top become the error).
     */
    task(kind, handler) {
        if (typeof kind !== "string" || kind === "")
            throw new TypeError("kind must be a non-empty string");
        if (typeof handler !== "function")
            throw new TypeError("handler must be a function");
        if (this.runPromise)
            throw new Error("register handlers before run()");
        this.handlers.set(kind, handler);
        return this;
    }
    /** The node id, once registered. */
    get nodeId() {
        return this.session?.id;
    }
    /** Handlers running now (prefetched tasks waiting for a slot not counted). */
    get active() {
        return this.executing;
    }
    /**
     * Runs until {@link Worker.stop} or SIGTERM/SIGINT, then drains. Resolves after the
     * drain; rejects when the worker cannot go on: a refused token
     * ({@link AuthenticationError}, {@link PermissionDeniedError}) or a server that stayed
     * unreachable for `startupTimeoutMs` at start. Run at a module's top level, a rejection
     * ends the process with exit code 1.
     */
    run() {
        if (!this.runPromise)
            this.runPromise = this.runInner();
        return this.runPromise;
    }
    /** Starts the drain (as SIGTERM does); resolves when `run()` has finished. */
    stop() {
        this.beginStop();
        return this.runPromise ? this.runPromise.catch(() => { }) : Promise.resolve();
    }
    beginStop() {
        if (this.stopping)
            return;
        this.stopping = true;
        this.wakeLeaser();
        // The inbox goes back to pending (other nodes get it now), then the long-poll is
        // dropped: after the drain call nothing new reaches this node.
        const s = this.session;
        const drained = s && !this.fatal
            ? this.transport
                .call("POST", `/v1/nodes/${s.id}/drain`, { token: s.token, timeoutMs: 2_000 })
                .catch((e) => this.log.debug("drain call failed", { error: String(e) }))
            : Promise.resolve();
        drained.finally(() => {
            this.stopCtl.abort();
            this.leaseCtl?.abort();
        });
    }
    async runInner() {
        if (this.handlers.size === 0)
            throw new Error("no handlers: call worker.task(kind, handler) before run()");
        const onSignal = (sig) => {
            this.signalled = true;
            if (!this.stopping) {
                this.log.info(`${sig}: draining`, { running: this.busy, grace_ms: this.graceMs });
                this.beginStop();
            }
            else if (!this.forced) {
                this.log.warn(`${sig} again: ending the grace now`);
                this.forced = true;
                this.forceStop?.();
            }
        };
        if (this.handleSignals) {
            process.on("SIGTERM", onSignal);
            process.on("SIGINT", onSignal);
        }
        try {
            const s = await this.registerFirst();
            if (!s)
                return;
            this.session = s;
            const heartbeat = this.heartbeatLoop();
            this.ticker = setInterval(() => this.tick(), this.tickMs);
            this.ticker.unref();
            await this.leaseLoop();
            await this.drain();
            this.endCtl.abort();
            await heartbeat;
            await this.deregister();
            if (this.fatal)
                throw this.fatal;
            if (this.signalled && this.busy > 0) {
                // Handlers that ignored their aborted signal would keep the process alive past
                // the grace (JavaScript cannot kill them): end it, as SIGTERM would have.
                this.log.warn("handlers still running after the grace ignore ctx.signal: exiting", { running: this.busy });
                setTimeout(() => process.exit(), EXIT_AFTER_DRAIN_MS).unref();
            }
        }
        finally {
            if (this.ticker)
                clearInterval(this.ticker);
            this.endCtl.abort();
            this.stopCtl.abort();
            if (this.handleSignals) {
                process.off("SIGTERM", onSignal);
                process.off("SIGINT", onSignal);
            }
        }
    }
    // ---- registration ----------------------------------------------------------------
    registerBody() {
        return JSON.stringify({
            name: this.name,
            queues: this.queues,
            tags: this.tags,
            capacity: this.concurrency + this.prefetch,
            kind: "machine",
        });
    }
    async register() {
        const reg = await this.transport.call("POST", "/v1/nodes", {
            token: this.token,
            body: this.registerBody(),
            timeoutMs: CALL_TIMEOUT_MS,
        });
        const hb = reg.heartbeat_interval_ms > 0 ? Math.max(100, reg.heartbeat_interval_ms) : DEFAULT_HEARTBEAT_MS;
        return { id: reg.id, token: reg.token, heartbeatMs: hb };
    }
    /** First registration: retries an unreachable or overloaded server for a while. */
    async registerFirst() {
        const started = Date.now();
        const backoff = new Backoff(200, 5_000);
        for (;;) {
            if (this.stopping)
                return undefined;
            try {
                const s = await this.register();
                this.log.info("node registered", {
                    node_id: s.id,
                    name: this.name,
                    server: this.transport.current,
                    concurrency: this.concurrency,
                    queues: this.queues,
                });
                return s;
            }
            catch (e) {
                if (!(e instanceof MusterError) || !e.transient)
                    throw registrationError(e);
                if (Date.now() - started >= this.startupTimeoutMs)
                    throw registrationError(e);
                const delay = e.retryAfterMs ?? backoff.next();
                this.log.warn("registration failed, retrying", { error: e.message, retry_in_ms: Math.round(delay) });
                await sleep(delay, this.stopCtl.signal);
            }
        }
    }
    /**
     * Registers again after the server forgot `staleId` (its Redis lost the node).
     * Concurrent callers share one attempt. A refused token is fatal.
     */
    reregister(staleId) {
        if (this.session?.id !== staleId)
            return Promise.resolve();
        if (this.reregistering)
            return this.reregistering;
        this.reregistering = (async () => {
            this.log.warn("the control plane forgot this node: registering again", { node_id: staleId });
            const backoff = new Backoff(500, 10_000);
            while (!this.endCtl.signal.aborted) {
                try {
                    const s = await this.register();
                    this.log.info("registered again", { node_id: s.id, old_node_id: staleId });
                    this.session = s;
                    // A long-poll of the old node would hold on for nothing.
                    this.leaseCtl?.abort();
                    return;
                }
                catch (e) {
                    if (!(e instanceof MusterError) || !e.transient) {
                        this.failFatally(registrationError(e));
                        return;
                    }
                    const delay = e.retryAfterMs ?? backoff.next();
                    this.log.warn("re-registration failed", { error: e.message, retry_in_ms: Math.round(delay) });
                    await sleep(delay, this.endCtl.signal);
                }
            }
        })().finally(() => {
            this.reregistering = undefined;
        });
        return this.reregistering;
    }
    failFatally(e) {
        if (this.fatal)
            return;
        this.fatal = e;
        this.log.error("cannot go on", { error: e instanceof Error ? e.message : String(e) });
        this.beginStop();
        this.forceStop?.();
    }
    async deregister() {
        const s = this.session;
        if (!s || this.fatal)
            return;
        const backoff = new Backoff(200, 2_000);
        for (let attempt = 1; attempt <= 3; attempt++) {
            try {
                await this.transport.call("DELETE", `/v1/nodes/${s.id}`, { token: s.token, timeoutMs: 5_000 });
                this.log.info("deregistered", { node_id: s.id });
                return;
            }
            catch (e) {
                if (e instanceof NotFoundError || !(e instanceof MusterError) || !e.transient || attempt === 3) {
                    if (!(e instanceof NotFoundError))
                        this.log.warn("deregistration failed; the server will time the node out", { error: String(e) });
                    return;
                }
                await sleep(e.retryAfterMs ?? backoff.next());
            }
        }
    }
    // ---- leasing and running -----------------------------------------------------------
    wakeLeaser() {
        const w = this.slotWaiter;
        if (w) {
            this.slotWaiter = undefined;
            w();
        }
    }
    async leaseLoop() {
        const backoff = new Backoff(250, 10_000);
        const halfWait = this.leaseWaitMs / 2;
        while (!this.stopping) {
            const free = this.freeSlots();
            // Busy: the report calls take the next tasks with the outcomes waiting to go.
            const flusherLeases = this.leaseWithReports && (this.reports.length > 0 || this.reportsOut > 0);
            if (free <= 0 || flusherLeases) {
                await new Promise((r) => (this.slotWaiter = r));
                continue;
            }
            const s = this.session;
            const max = free < MAX_LEASE ? free : MAX_LEASE;
            const asked = Date.now();
            let leases;
            // Held while the call is out, so a report call cannot ask for the same slots.
            this.reserved += max;
            try {
                const reply = await this.transport.call("POST", `/v1/nodes/${s.id}/lease`, {
                    token: s.token,
                    body: `{"max":${max},"wait_ms":${this.leaseWaitMs}}`,
                    timeoutMs: this.leaseWaitMs + 10_000,
                    signal: (this.leaseCtl = new AbortController()).signal,
                });
                leases = reply.leases;
                this.reserved -= max;
            }
            catch (e) {
                this.reserved -= max;
                if (this.stopping)
                    return;
                if (this.session !== s)
                    continue; // registered again meanwhile: lease as the new node
                if (isForgotten(e)) {
                    await this.reregister(s.id);
                    continue;
                }
                if (!(e instanceof MusterError) || !e.transient) {
                    // 403, 400, 422...: a refused token or a bug; retrying would loop for ever.
                    this.failFatally(e);
                    return;
                }
                const delay = e.retryAfterMs ?? backoff.next();
                this.log.warn("lease failed", { node_id: s.id, error: e.message, retry_in_ms: Math.round(delay) });
                await sleep(delay, this.stopCtl.signal);
                continue;
            }
            if (leases.length === 0) {
                // A server that answers an empty long-poll at once (a draining node) must not
                // turn this loop into a busy one.
                if (Date.now() - asked < halfWait)
                    await sleep(backoff.next(), this.stopCtl.signal);
                continue;
            }
            backoff.reset();
            this.stats.leaseCalls++;
            this.startLeases(leases, s.id);
        }
    }
    /** Slots neither in use nor held for a call out. */
    freeSlots() {
        return this.concurrency + this.prefetch - this.busy - this.reserved;
    }
    /** Starts the leased tasks (those granted while stopping, or beyond the slots, go back). */
    startLeases(leases, nodeId) {
        const now = Date.now();
        for (let i = 0; i < leases.length; i++) {
            const l = leases[i];
            if (this.stopping || this.freeSlots() <= 0) {
                // Granted while stopping (or more than asked): hand it back at once.
                this.queueReport(l.task.id, l.lease_token, failedItem(l.task.id, l.lease_token, SHUTDOWN_ERROR, true), true);
                continue;
            }
            this.start(l, nodeId, now);
        }
        // Handlers that finished at once (sync ones): their reports leave now, with the
        // request for the tasks of the slots they free.
        if (this.reports.length > 0)
            this.flush();
    }
    start(lease, nodeId, now) {
        const ctx = new TaskContext(this, lease, nodeId, now);
        this.running.set(ctx.taskId, ctx);
        this.busy++;
        this.stats.started++;
        if (ctx._ttlMs / 6 < this.tickMs)
            this.retick(ctx._ttlMs / 6);
        if (this.executing >= this.concurrency) {
            // Prefetched: it runs when a slot frees (its lease renewed meanwhile).
            ctx._queued = true;
            this.waiting.push(ctx);
            return;
        }
        this.execute(ctx);
    }
    /** Runs a leased task's handler in a free slot. */
    execute(ctx) {
        const lease = ctx._raw;
        ctx._queued = false;
        ctx._ran = true;
        this.executing++;
        const maxRun = lease.task.max_run_ms;
        if (typeof maxRun === "number" && maxRun > 0) {
            ctx._timer = setTimeout(() => this.stopTask(ctx, "timeout"), maxRun);
        }
        const handler = this.handlers.get(ctx.kind);
        if (!handler) {
            const known = [...this.handlers.keys()].join(", ");
            this.settle(ctx, false, new NonRetryable(`no handler for kind ${JSON.stringify(ctx.kind)} in this worker (it has: ${known})`));
            return;
        }
        let r;
        try {
            r = handler(lease.task.payload, ctx);
        }
        catch (e) {
            this.settle(ctx, false, e);
            return;
        }
        if (r !== null && typeof r === "object" && typeof r.then === "function") {
            r.then((v) => this.settle(ctx, true, v), (e) => this.settle(ctx, false, e));
        }
        else {
            this.settle(ctx, true, r);
        }
    }
    /** A handler settled: report its outcome (unless it was stopped) and free its slot. */
    settle(ctx, ok, value) {
        if (ctx._settled)
            return;
        ctx._settled = true;
        if (ctx._ran) {
            this.executing--;
            const next = this.waiting.shift();
            if (next)
                this.execute(next);
        }
        if (ctx._timer)
            clearTimeout(ctx._timer);
        if (!ctx._finished) {
            if (ok) {
                const item = succeededItem(ctx.taskId, ctx._raw.lease_token, value);
                this.finishTask(ctx, item ?? failedItem(ctx.taskId, ctx._raw.lease_token, resultError(value), false), item === undefined);
            }
            else {
                const retryable = !(value instanceof NonRetryable);
                this.finishTask(ctx, failedItem(ctx.taskId, ctx._raw.lease_token, errorText(value), retryable), true);
            }
        }
        this.busy--;
        if (this.busy === 0 && this.idleWaiter) {
            const w = this.idleWaiter;
            this.idleWaiter = undefined;
            w();
        }
        this.wakeLeaser();
    }
    /** The lease is done with: queue its report (if any) and stop renewing it. */
    finishTask(ctx, item, failed) {
        ctx._finished = true;
        if (this.running.get(ctx.taskId) === ctx)
            this.running.delete(ctx.taskId);
        if (item !== undefined)
            this.queueReport(ctx.taskId, ctx._raw.lease_token, item, failed);
    }
    /** Stops a running task: aborts its signal and reports what the reason calls for. */
    stopTask(ctx, reason) {
        if (ctx._stop || ctx._finished)
            return;
        ctx._stop = reason;
        ctx._controller?.abort(ctx._reason());
        const id = ctx.taskId;
        const tok = ctx._raw.lease_token;
        switch (reason) {
            case "cancelled":
                this.log.info("cancel requested: stopping the task", { task_id: id });
                this.finishTask(ctx, failedItem(id, tok, CANCELLED_ERROR, false), true);
                break;
            case "shutdown":
                this.finishTask(ctx, failedItem(id, tok, SHUTDOWN_ERROR, true), true);
                break;
            case "timeout":
                this.log.info("task ran past its max_run_ms: stopped", { task_id: id });
                this.finishTask(ctx, failedItem(id, tok, `timed out after ${ctx._raw.task.max_run_ms} ms`, true), true);
                break;
            case "lease_lost":
                this.log.warn("lease lost: task stopped, not reported", { task_id: id });
                this.finishTask(ctx, undefined, false);
                break;
        }
        if (ctx._queued) {
            // Stopped before it started: its slot in the prefetch frees now.
            ctx._queued = false;
            const i = this.waiting.indexOf(ctx);
            if (i >= 0)
                this.waiting.splice(i, 1);
            this.settle(ctx, false, undefined);
        }
    }
    // ---- lease renewal -------------------------------------------------------------------
    retick(ms) {
        this.tickMs = Math.max(20, Math.floor(ms));
        if (this.ticker)
            clearInterval(this.ticker);
        this.ticker = setInterval(() => this.tick(), this.tickMs);
        this.ticker.unref();
    }
    tick() {
        if (this.running.size === 0 || this.batchRenewing)
            return;
        const now = Date.now();
        const due = [];
        for (const ctx of this.running.values()) {
            // One `POST /v1/nodes/{id}/extend` for every lease due, up to the route's 1,000
            // (the rest go with the next tick, well inside their TTL).
            if (due.length >= MAX_EXTEND_BATCH)
                break;
            if (ctx._renewAt <= now && !ctx._renewing && !ctx._finished)
                due.push(ctx);
        }
        if (due.length > 0)
            void this.renewMany(due);
    }
    /**
     * Renews many leases in one call (`POST /v1/nodes/{id}/extend`); each lease refused
     * stops its task, a cancel requested stops its task. Never rejects.
     */
    async renewMany(due) {
        const s = this.session;
        const sent = Date.now();
        this.batchRenewing = true;
        for (const ctx of due)
            ctx._renewing = true;
        this.stats.renewals += due.length;
        const items = due.map((ctx) => `{"task_id":${JSON.stringify(ctx.taskId)},"lease_token":${JSON.stringify(ctx._raw.lease_token)}}`);
        const ttl = Math.min(...due.map((ctx) => ctx._ttlMs));
        try {
            const reply = await this.transport.call("POST", `/v1/nodes/${s.id}/extend`, {
                token: s.token,
                body: `{"leases":[${items.join(",")}]}`,
                timeoutMs: Math.min(CALL_TIMEOUT_MS, Math.max(1_000, ttl / 2)),
            });
            for (let i = 0; i < due.length; i++) {
                const ctx = due[i];
                const r = reply.results[i];
                if (!r || r.task_id !== ctx.taskId)
                    continue; // answered out of order: the next tick renews it
                if (r.status === "extended") {
                    this.renewed(ctx, sent, r.cancel_requested === true);
                }
                else {
                    this.stopTask(ctx, "lease_lost");
                }
            }
        }
        catch (e) {
            if (isForgotten(e)) {
                // The node is gone from the server (its Redis restarted empty): so are its
                // leases. Register again; these tasks' results would be refused.
                for (const ctx of due)
                    this.stopTask(ctx, "lease_lost");
                void this.reregister(s.id);
            }
            else {
                for (const ctx of due)
                    this.renewalFailed(ctx, e);
                this.log.warn("lease renewal failed", { leases: due.length, error: e instanceof Error ? e.message : String(e) });
            }
        }
        finally {
            for (const ctx of due)
                ctx._renewing = false;
            this.batchRenewing = false;
        }
    }
    /**
     * Renews one lease (with progress when `withProgress`); on refusal the task is
     * stopped. Never rejects.
     * @internal
     */
    async _renew(ctx, progress, withProgress) {
        if (ctx._finished)
            return;
        const s = this.session;
        const sent = Date.now();
        ctx._renewing = true;
        this.stats.renewals++;
        const body = withProgress
            ? `{"lease_token":${JSON.stringify(ctx._raw.lease_token)},"progress":${safeJson(progress)}}`
            : `{"lease_token":${JSON.stringify(ctx._raw.lease_token)}}`;
        try {
            const reply = await this.transport.call("POST", `/v1/tasks/${ctx.taskId}/extend`, {
                token: s.token,
                body,
                timeoutMs: Math.min(CALL_TIMEOUT_MS, Math.max(1_000, ctx._ttlMs / 2)),
            });
            this.renewed(ctx, sent, reply.cancel_requested);
        }
        catch (e) {
            if (e instanceof MusterError && (e.status === 404 || e.status === 409)) {
                this.stopTask(ctx, "lease_lost");
            }
            else if (this.renewalFailed(ctx, e)) {
                this.log.warn("lease renewal failed", { task_id: ctx.taskId, error: e instanceof Error ? e.message : String(e) });
            }
        }
        finally {
            ctx._renewing = false;
        }
    }
    /** A renewal sent at `sent` went through: the new deadline, the next renewal. */
    renewed(ctx, sent, cancelRequested) {
        ctx._deadline = sent + ctx._ttlMs;
        ctx._renewAt = sent + Math.max(ctx._ttlMs / 3, 20);
        if (cancelRequested)
            this.stopTask(ctx, "cancelled");
    }
    /**
     * A renewal got no answer (or a transient one): the task stops when its lease ran out,
     * else the renewal is retried soon, well inside what is left. True when retried.
     */
    renewalFailed(ctx, e) {
        const now = Date.now();
        if (now >= ctx._deadline) {
            this.log.warn("lease expired without a renewal", { task_id: ctx.taskId, error: String(e) });
            this.stopTask(ctx, "lease_lost");
            return false;
        }
        ctx._renewAt = now + Math.min(200, (ctx._deadline - now) / 4);
        return true;
    }
    // ---- heartbeats ----------------------------------------------------------------------
    async heartbeatLoop() {
        const end = this.endCtl.signal;
        let lastStatus = "active";
        while (!end.aborted) {
            const s = this.session;
            await sleep(s.heartbeatMs, end);
            if (end.aborted)
                return;
            try {
                const reply = await this.transport.call("POST", `/v1/nodes/${s.id}/heartbeat`, {
                    token: s.token,
                    timeoutMs: CALL_TIMEOUT_MS,
                    signal: end,
                });
                if (reply.status !== lastStatus) {
                    this.log.info("node status changed", { node_id: s.id, status: reply.status });
                    lastStatus = reply.status;
                }
                for (const id of reply.cancel) {
                    const ctx = this.running.get(id);
                    if (ctx)
                        this.stopTask(ctx, "cancelled");
                }
            }
            catch (e) {
                if (end.aborted)
                    return;
                if (isForgotten(e)) {
                    await this.reregister(s.id);
                    lastStatus = "active";
                }
                else {
                    this.log.warn("heartbeat failed", { node_id: s.id, error: e instanceof Error ? e.message : String(e) });
                }
            }
        }
    }
    // ---- reports -------------------------------------------------------------------------
    queueReport(taskId, token, item, failed) {
        this.reports.push(item);
        this.reportMeta.push({ taskId, token, failed });
        if (!this.flushScheduled && this.flushesOut < REPORT_CALLS) {
            this.flushScheduled = true;
            // After the microtasks queued now: every handler of a lease batch that settles at
            // once goes in one call.
            queueMicrotask(() => this.flush());
        }
    }
    /** Most reports (and leases asked) of one report call: the slots' share of a call. */
    reportChunk() {
        return Math.min(MAX_REPORT_BATCH, Math.max(1, Math.ceil((this.concurrency + this.prefetch) / REPORT_CALLS)));
    }
    /** Starts report calls for what is queued, while fewer than {@link REPORT_CALLS} are out. */
    flush() {
        this.flushScheduled = false;
        const chunk = this.reportChunk();
        while (this.reports.length > 0 && this.flushesOut < REPORT_CALLS) {
            let n = 0;
            let bytes = 0;
            while (n < this.reports.length && n < chunk) {
                bytes += this.reports[n].length + 1;
                if (n > 0 && bytes > MAX_REPORT_BYTES)
                    break;
                n++;
            }
            const items = this.reports.splice(0, n);
            const meta = this.reportMeta.splice(0, n);
            this.flushesOut++;
            this.reportsOut += n;
            void this.sendReports(items, meta).finally(() => {
                this.flushesOut--;
                this.reportsOut -= n;
                if (this.reports.length > 0)
                    this.flush();
                if (this.flushesOut === 0) {
                    const w = this.flushIdle;
                    this.flushIdle = undefined;
                    w?.();
                }
                this.wakeLeaser();
            });
        }
    }
    /**
     * One report call (retried with backoff while the server or Redis is away), asking
     * for as many new tasks as there are free slots. Never rejects.
     */
    async sendReports(items, meta) {
        const n = items.length;
        const joined = items.join(",");
        const backoff = new Backoff(100, 5_000);
        let failingSince;
        for (;;) {
            const s = this.session;
            let ask = 0;
            if (this.leaseWithReports && !this.stopping) {
                // At most a call's share of the slots (half of them with two calls out): a call
                // alone leaves the other half to the next call or the long-poll.
                ask = Math.min(MAX_LEASE, this.reportChunk(), Math.max(0, this.freeSlots()));
                this.reserved += ask;
            }
            const body = ask > 0 ? `{"reports":[${joined}],"lease_max":${ask}}` : `{"reports":[${joined}]}`;
            try {
                this.stats.reportCalls++;
                const reply = await this.transport.call("POST", `/v1/nodes/${s.id}/reports`, {
                    token: s.token,
                    body,
                    timeoutMs: CALL_TIMEOUT_MS * 2,
                });
                this.reserved -= ask;
                this.accountReports(reply.results, meta);
                if (reply.leases && reply.leases.length > 0)
                    this.startLeases(reply.leases, s.id);
                return;
            }
            catch (e) {
                this.reserved -= ask;
                if (ask > 0 && e instanceof MusterError && e.code === "invalid_body") {
                    // A server older than `lease_max` refuses the field: the long-poll alone
                    // leases from now on, and the same reports go again without it.
                    this.log.info("the server does not lease with reports; the long-poll alone leases", { node_id: s.id });
                    this.leaseWithReports = false;
                    this.wakeLeaser();
                    continue;
                }
                const transient = e instanceof MusterError && e.transient;
                if (transient && !(this.forced && this.stopping)) {
                    failingSince ??= Date.now();
                    if (Date.now() - failingSince < REPORT_RETRY_FOR_MS) {
                        const delay = e.retryAfterMs ?? backoff.next();
                        this.log.warn("report flush failed", { reports: n, error: e.message, retry_in_ms: Math.round(delay) });
                        await sleep(delay, this.endCtl.signal);
                        if (!this.endCtl.signal.aborted)
                            continue;
                    }
                }
                if (isForgotten(e) && this.session?.id === s.id)
                    void this.reregister(s.id);
                // The node was forgotten (its leases with it), the batch is refused as a
                // whole, or it stayed undeliverable: retrying cannot help.
                this.log.warn("reports dropped", { reports: n, error: e instanceof Error ? e.message : String(e) });
                this.stats.refused += n;
                return;
            }
        }
    }
    accountReports(results, meta) {
        for (let i = 0; i < results.length; i++) {
            const r = results[i];
            const m = meta[i];
            if (r.status >= 200 && r.status < 300) {
                if (m?.failed)
                    this.stats.failed++;
                else
                    this.stats.succeeded++;
                continue;
            }
            this.stats.refused++;
            if (r.status === 404 || r.status === 409) {
                this.log.debug("report refused: lease lost", { task_id: r.task_id, code: r.code });
            }
            else if (m && !m.failed && (r.status === 413 || r.status === 422)) {
                // The result itself was refused: fail the attempt for good instead of letting
                // the lease expire into a retry that would be refused the same way.
                this.log.warn("result refused; failing the task", { task_id: r.task_id, status: r.status, code: r.code });
                this.queueReport(m.taskId, m.token, failedItem(m.taskId, m.token, `result refused by the server (${r.status} ${r.code ?? ""})`, false), true);
            }
            else {
                this.log.warn("report refused", { task_id: r.task_id, status: r.status, code: r.code });
            }
        }
    }
    // ---- drain ---------------------------------------------------------------------------
    async drain() {
        const s = this.session;
        if (this.busy > 0 && !this.fatal) {
            this.log.info("draining: leasing stopped, waiting for running tasks", {
                node_id: s.id,
                running: this.busy,
                grace_ms: this.graceMs,
            });
            await new Promise((resolve) => {
                const t = setTimeout(done, this.graceMs);
                function done() {
                    clearTimeout(t);
                    resolve();
                }
                this.idleWaiter = done;
                this.forceStop = done;
            });
            this.idleWaiter = undefined;
            this.forceStop = undefined;
        }
        if (this.running.size > 0) {
            this.log.warn("grace over: handing back the remaining tasks", { node_id: s.id, tasks: this.running.size });
            for (const ctx of [...this.running.values()])
                this.stopTask(ctx, "shutdown");
        }
        await this.flushAll(FINAL_FLUSH_MS);
    }
    /** Waits until every queued report was sent (or `ms` passed). */
    async flushAll(ms) {
        const until = Date.now() + ms;
        while ((this.reports.length > 0 || this.flushesOut > 0 || this.flushScheduled) && Date.now() < until) {
            if (this.flushesOut === 0 && !this.flushScheduled)
                this.flush();
            await new Promise((resolve) => {
                const t = setTimeout(resolve, Math.max(0, until - Date.now()));
                this.flushIdle = () => {
                    clearTimeout(t);
                    resolve();
                };
            });
        }
        const left = this.reports.length + this.reportsOut;
        if (left > 0)
            this.log.error("could not flush the last reports in time; dropping them", { reports: left });
    }
}
/** True when an error on a node route means the node (or its token) is unknown. */
function isForgotten(e) {
    return e instanceof AuthenticationError || e instanceof NotFoundError;
}
/** The error `run()` rejects with when the node cannot register. */
function registrationError(e) {
    if (!(e instanceof MusterError))
        return e;
    let message;
    if (e instanceof AuthenticationError) {
        message = `cannot register the node: the token was refused (${e.status} ${e.code}: ${e.detail}); check MUSTER_TOKEN or the token option`;
    }
    else if (e instanceof PermissionDeniedError) {
        message = `cannot register the node: the token may not register nodes (${e.status} ${e.code}: ${e.detail}); use an agent or admin token`;
    }
    else {
        message = `cannot register the node: ${e.message}`;
    }
    const Cls = e.constructor;
    const problem = { status: e.status, code: e.code, detail: e.detail, title: e.title, type: e.type };
    if (e instanceof ConnectionError)
        return new ConnectionError(e.url, message, { method: e.method, path: e.path, cause: e.cause, message });
    return new Cls(problem, { method: e.method, path: e.path, retryAfterMs: e.retryAfterMs, cause: e, message });
}
/** JSON text of a value, `null` for what JSON cannot carry. */
function safeJson(v) {
    try {
        return JSON.stringify(v) ?? "null";
    }
    catch {
        return "null";
    }
}
/** The report item of a success; `undefined` when the result cannot be sent (see {@link resultError}). */
function succeededItem(taskId, token, value) {
    let json;
    try {
        json = JSON.stringify(value);
    }
    catch {
        return undefined;
    }
    if (json === undefined)
        json = "null";
    // Cheap bound first: a UTF-16 unit is at most 3 UTF-8 bytes.
    if (json.length * 3 > MAX_RESULT_BYTES && Buffer.byteLength(json) > MAX_RESULT_BYTES)
        return undefined;
    return `{"task_id":${JSON.stringify(taskId)},"lease_token":${JSON.stringify(token)},"outcome":"succeeded","result":${json}}`;
}
/** Why a handler's result cannot be reported. */
function resultError(value) {
    let json;
    try {
        json = JSON.stringify(value);
    }
    catch (e) {
        return `the handler's result is not JSON: ${errorText(e)}`;
    }
    return `the handler's result is ${Buffer.byteLength(json ?? "")} bytes, the limit is ${MAX_RESULT_BYTES}`;
}
function failedItem(taskId, token, error, retryable) {
    return `{"task_id":${JSON.stringify(taskId)},"lease_token":${JSON.stringify(token)},"error":${JSON.stringify(error)},"retryable":${retryable},"outcome":"failed"}`;
}
/** A thrown value as the task's error: name, message, the top of the stack, the cause. */
export function errorText(e) {
    let s;
    if (e instanceof Error) {
        s = `${e.name}: ${e.message}`;
        if (e.stack) {
            const frames = e.stack.split("\n").filter((l) => /^\s+at /.test(l));
            if (frames.length > 0)
                s += "\n" + frames.slice(0, STACK_FRAMES).join("\n");
            if (frames.length > STACK_FRAMES)
                s += `\n    ... ${frames.length - STACK_FRAMES} more`;
        }
        const cause = e.cause;
        if (cause !== undefined)
            s += `\ncaused by: ${cause instanceof Error ? `${cause.name}: ${cause.message}` : safeJson(cause)}`;
    }
    else if (typeof e === "string") {
        s = e;
    }
    else {
        s = safeJson(e);
    }
    return s.length > MAX_ERROR_CHARS ? s.slice(0, MAX_ERROR_CHARS) + "\n[truncated]" : s;
}

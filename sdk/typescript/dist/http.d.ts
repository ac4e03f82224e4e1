/**
 * The HTTP layer shared by Client and Worker: Node's built-in `node:http` / `node:https`
 * with a keep-alive agent per transport (or a `fetch` the caller passes), bearer auth, a
 * timeout per call, problem+json errors turned into typed ones, and fail-over between
 * control-plane URLs on connection errors.
 *
 * Why not the global `fetch` by default: undici's fetch builds a WHATWG Request,
 * Response and ReadableStream per call, and a worker makes hundreds of calls a second;
 * measured side by side (`bench/transport.mjs`), a call costs it about twice the CPU of
 * `node:http`. Both are built into Node; neither is a dependency.
 * @module
 */
/** Default control plane when neither the options nor `MUSTER_SERVER` name one. */
export declare const DEFAULT_SERVER = "http://127.0.0.1:8080";
/** Timeout of a call that is not a long-poll, ms. */
export declare const CALL_TIMEOUT_MS = 15000;
/** Server URLs from an option, or `MUSTER_SERVER` (comma-separated), or the default. */
export declare function resolveServers(server: string | string[] | undefined): string[];
/** The token from an option or `MUSTER_TOKEN`; empty means none. */
export declare function resolveToken(token: string | undefined): string | undefined;
/** Options of one call. */
export interface CallOptions {
    /** Bearer token; none when absent. */
    token?: string | undefined;
    /** JSON text of the body. */
    body?: string | undefined;
    /** Timeout of this call, ms. */
    timeoutMs?: number;
    /** Aborts the call (the promise rejects with the signal's reason). */
    signal?: AbortSignal | undefined;
    /** Extra headers. */
    headers?: Record<string, string> | undefined;
}
/** One control plane, or several tried in turn. */
export declare class Transport {
    readonly servers: readonly string[];
    private index;
    private readonly fetchFn;
    private readonly httpAgent;
    private readonly httpsAgent;
    /** `fetchFn`: a `fetch` to send every call with instead of `node:http`. */
    constructor(servers: string[], fetchFn?: typeof fetch);
    /** Closes the idle keep-alive connections (calls still out finish). */
    close(): void;
    /** The URL calls go to now. */
    get current(): string;
    /**
     * One call; the parsed JSON answer (`null` for an empty one). Moves on to the next
     * server when a server cannot be connected to (each is tried once per call).
     * @throws {MusterError} an error answer, typed by status; {@link ConnectionError}
     * when no answer came.
     */
    call<T>(method: string, path: string, opts?: CallOptions): Promise<T>;
    private once;
    /** One exchange over `node:http(s)`; rejects with the socket's error (its `code` kept). */
    private viaNode;
}
/** True when the error (a socket's or a fetch failure's cause chain) says the request was not sent. */
export declare function notSent(e: unknown): boolean;
/** Exponential backoff with jitter: each delay is between half and all of the step. */
export declare class Backoff {
    private readonly min;
    private readonly max;
    private cur;
    constructor(min: number, max: number);
    reset(): void;
    next(): number;
}
/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
export declare function sleep(ms: number, signal?: AbortSignal): Promise<void>;

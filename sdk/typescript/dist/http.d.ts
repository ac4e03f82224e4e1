/**
 * The HTTP layer shared by Client and Worker: Node's built-in `fetch` (undici, which
 * keeps connections alive), bearer auth, a timeout per call, problem+json errors turned
 * into typed ones, and fail-over between control-plane URLs on connection errors.
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
    constructor(servers: string[], fetchFn?: typeof fetch);
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
}
/** True when the error (a fetch failure's cause chain) says the request was not sent. */
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

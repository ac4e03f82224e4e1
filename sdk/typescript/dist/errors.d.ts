/**
 * Typed errors. Every failed call throws a {@link MusterError} (or a subclass picked
 * by the HTTP status) carrying the problem+json `code`, `status` and `detail` of the
 * answer; a call that got no answer throws a {@link ConnectionError}. Handlers throw
 * {@link NonRetryable} to fail a task for good.
 * @module
 */
/** The `application/problem+json` body (RFC 7807) every muster error carries. */
export interface Problem {
    type?: string;
    title?: string;
    status: number;
    detail: string;
    /** Stable machine-readable code, e.g. `lease_conflict`, `invalid_task`. */
    code: string;
}
/** What an error was about: the call that failed. */
export interface ErrorOrigin {
    method?: string;
    path?: string;
    /** `Retry-After` of the answer, in ms. */
    retryAfterMs?: number;
    cause?: unknown;
    /** The error's message, instead of one made from the problem. */
    message?: string;
}
/** Base class of every error the SDK throws for a failed call. */
export declare class MusterError extends Error {
    /** HTTP status; 0 when no answer came (see {@link ConnectionError}). */
    readonly status: number;
    /** Stable problem `code` (`http_<status>` when the body was not problem+json). */
    readonly code: string;
    /** What happened and what to do, as the server said it. */
    readonly detail: string;
    /** Problem `title`, when given. */
    readonly title: string | undefined;
    /** Problem `type` URI, when given. */
    readonly type: string | undefined;
    /** `Retry-After` in ms, when the server gave one. */
    readonly retryAfterMs: number | undefined;
    /** Method of the failed call. */
    readonly method: string | undefined;
    /** Path of the failed call. */
    readonly path: string | undefined;
    constructor(problem: Problem, origin?: ErrorOrigin);
    /** True for errors worth retrying later: no answer, 5xx, 408 and 429. */
    get transient(): boolean;
}
/** 400 or 415: the request was malformed. */
export declare class BadRequestError extends MusterError {
}
/** 401: no token, or a token the server does not know. */
export declare class AuthenticationError extends MusterError {
}
/** 403: the token's role may not do this. */
export declare class PermissionDeniedError extends MusterError {
}
/** 404: no such task, node, queue... */
export declare class NotFoundError extends MusterError {
}
/** 409: the call conflicts with the current state (a stale lease, a finished task...). */
export declare class ConflictError extends MusterError {
}
/** 413: a payload, result or body over the server's limits. */
export declare class PayloadTooLargeError extends MusterError {
}
/** 422: a well-formed request with invalid fields. */
export declare class ValidationError extends MusterError {
}
/** 429: over the token's rate limit; see `retryAfterMs`. */
export declare class RateLimitedError extends MusterError {
}
/** 503: Redis is unreachable from the control plane; see `retryAfterMs`. */
export declare class UnavailableError extends MusterError {
}
/** Any other 5xx. */
export declare class ServerError extends MusterError {
}
/** No answer: the server could not be reached, or the connection broke. `status` is 0. */
export declare class ConnectionError extends MusterError {
    /** URL tried last. */
    readonly url: string;
    constructor(url: string, message: string, origin?: ErrorOrigin);
}
/** The call got no answer in time (a kind of {@link ConnectionError}). */
export declare class TimeoutError extends ConnectionError {
    constructor(url: string, timeoutMs: number, origin?: ErrorOrigin);
}
/** The typed error for an error answer; `body` is its text (problem+json or not). */
export declare function errorFromAnswer(status: number, body: string, origin?: ErrorOrigin): MusterError;
/**
 * Throw this from a handler to fail the task for good: no further attempt, whatever
 * `maxAttempts` says. Any other thrown value is a retryable failure.
 */
export declare class NonRetryable extends Error {
    constructor(message?: string, options?: {
        cause?: unknown;
    });
}
/** Why a running task's `ctx.signal` was aborted. */
export type StopReason = "cancelled" | "lease_lost" | "timeout" | "shutdown";
/** The `reason` of an aborted `ctx.signal`: the result of the attempt is no longer wanted. */
export declare class TaskStoppedError extends Error {
    /**
     * `cancelled` by a user, `lease_lost` (the lease expired or moved), `timeout` (the
     * task's `maxRunMs` passed) or `shutdown` (the worker's grace ran out).
     */
    readonly reason: StopReason;
    readonly taskId: string;
    constructor(taskId: string, reason: StopReason);
}

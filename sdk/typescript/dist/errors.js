/**
 * Typed errors. Every failed call throws a {@link MusterError} (or a subclass picked
 * by the HTTP status) carrying the problem+json `code`, `status` and `detail` of the
 * answer; a call that got no answer throws a {@link ConnectionError}. Handlers throw
 * {@link NonRetryable} to fail a task for good.
 * @module
 */
/** Base class of every error the SDK throws for a failed call. */
export class MusterError extends Error {
    /** HTTP status; 0 when no answer came (see {@link ConnectionError}). */
    status;
    /** Stable problem `code` (`http_<status>` when the body was not problem+json). */
    code;
    /** What happened and what to do, as the server said it. */
    detail;
    /** Problem `title`, when given. */
    title;
    /** Problem `type` URI, when given. */
    type;
    /** `Retry-After` in ms, when the server gave one. */
    retryAfterMs;
    /** Method of the failed call. */
    method;
    /** Path of the failed call. */
    path;
    constructor(problem, origin = {}) {
        const where = origin.method && origin.path ? `${origin.method} ${origin.path}: ` : "";
        const status = problem.status ? `${problem.status} ` : "";
        super(origin.message ?? `${where}${status}${problem.code}: ${problem.detail}`, origin.cause === undefined ? undefined : { cause: origin.cause });
        this.name = new.target.name;
        this.status = problem.status;
        this.code = problem.code;
        this.detail = problem.detail;
        this.title = problem.title;
        this.type = problem.type;
        this.retryAfterMs = origin.retryAfterMs;
        this.method = origin.method;
        this.path = origin.path;
    }
    /** True for errors worth retrying later: no answer, 5xx, 408 and 429. */
    get transient() {
        return this.status === 0 || this.status >= 500 || this.status === 408 || this.status === 429;
    }
}
/** 400 or 415: the request was malformed. */
export class BadRequestError extends MusterError {
}
/** 401: no token, or a token the server does not know. */
export class AuthenticationError extends MusterError {
}
/** 403: the token's role may not do this. */
export class PermissionDeniedError extends MusterError {
}
/** 404: no such task, node, queue... */
export class NotFoundError extends MusterError {
}
/** 409: the call conflicts with the current state (a stale lease, a finished task...). */
export class ConflictError extends MusterError {
}
/** 413: a payload, result or body over the server's limits. */
export class PayloadTooLargeError extends MusterError {
}
/** 422: a well-formed request with invalid fields. */
export class ValidationError extends MusterError {
}
/** 429: over the token's rate limit; see `retryAfterMs`. */
export class RateLimitedError extends MusterError {
}
/** 503: Redis is unreachable from the control plane; see `retryAfterMs`. */
export class UnavailableError extends MusterError {
}
/** Any other 5xx. */
export class ServerError extends MusterError {
}
/** No answer: the server could not be reached, or the connection broke. `status` is 0. */
export class ConnectionError extends MusterError {
    /** URL tried last. */
    url;
    constructor(url, message, origin = {}) {
        super({ status: 0, code: "connection_error", detail: `cannot reach ${url}: ${message}` }, origin);
        this.url = url;
    }
}
/** The call got no answer in time (a kind of {@link ConnectionError}). */
export class TimeoutError extends ConnectionError {
    constructor(url, timeoutMs, origin = {}) {
        super(url, `no answer within ${timeoutMs} ms`, origin);
        Object.defineProperty(this, "code", { value: "timeout" });
    }
}
const BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: BadRequestError,
    422: ValidationError,
    429: RateLimitedError,
    503: UnavailableError,
};
/** The typed error for an error answer; `body` is its text (problem+json or not). */
export function errorFromAnswer(status, body, origin = {}) {
    let problem;
    try {
        const p = JSON.parse(body);
        if (p && typeof p === "object" && typeof p.code === "string") {
            problem = {
                type: typeof p.type === "string" ? p.type : undefined,
                title: typeof p.title === "string" ? p.title : undefined,
                status,
                code: p.code,
                detail: typeof p.detail === "string" && p.detail !== "" ? p.detail : (p.title ?? ""),
            };
        }
    }
    catch {
        // Not JSON: the text is the detail.
    }
    if (!problem) {
        const text = body.trim().slice(0, 300);
        problem = { status, code: `http_${status}`, detail: text || `HTTP ${status}` };
    }
    const Cls = BY_STATUS[status] ?? (status >= 500 ? ServerError : MusterError);
    return new Cls(problem, origin);
}
/**
 * Throw this from a handler to fail the task for good: no further attempt, whatever
 * `maxAttempts` says. Any other thrown value is a retryable failure.
 */
export class NonRetryable extends Error {
    constructor(message, options) {
        super(message, options);
        this.name = "NonRetryable";
    }
}
/** The `reason` of an aborted `ctx.signal`: the result of the attempt is no longer wanted. */
export class TaskStoppedError extends Error {
    /**
     * `cancelled` by a user, `lease_lost` (the lease expired or moved), `timeout` (the
     * task's `maxRunMs` passed) or `shutdown` (the worker's grace ran out).
     */
    reason;
    taskId;
    constructor(taskId, reason) {
        const why = reason === "cancelled"
            ? "was cancelled"
            : reason === "lease_lost"
                ? "lost its lease (another attempt may run it)"
                : reason === "timeout"
                    ? "ran past its maxRunMs"
                    : "was stopped: the worker is shutting down";
        super(`task ${taskId} ${why}`);
        this.name = "TaskStoppedError";
        this.reason = reason;
        this.taskId = taskId;
    }
}

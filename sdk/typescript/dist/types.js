/**
 * Shapes of the API as the SDK shows them: camelCase fields over the server's
 * snake_case JSON (only top-level field names change; payloads, results and progress
 * stay exactly as they are).
 * @module
 */
/** States a task does not leave by itself. */
export const TERMINAL_STATES = new Set(["succeeded", "failed", "cancelled"]);
const camelCache = new Map();
/** `max_attempts` → `maxAttempts`. */
export function camel(k) {
    let c = camelCache.get(k);
    if (c === undefined) {
        c = k.replace(/_([a-z0-9])/g, (_, ch) => ch.toUpperCase());
        camelCache.set(k, c);
    }
    return c;
}
/** `maxAttempts` → `max_attempts`. */
export function snake(k) {
    return k.replace(/[A-Z]/g, (ch) => `_${ch.toLowerCase()}`);
}
/** A server task record with camelCase field names (values untouched). */
export function toTask(raw) {
    const out = {};
    for (const k in raw)
        out[camel(k)] = raw[k];
    return out;
}
/** Task options as the server's JSON fields. */
export function taskFields(opts, into) {
    if (!opts)
        return into;
    for (const [k, v] of Object.entries(opts)) {
        if (v === undefined || k === "idempotencyKey")
            continue;
        if (k === "runAt" && v instanceof Date)
            into.run_at = v.toISOString();
        else if (k === "backoff" && v && typeof v === "object") {
            const b = {};
            for (const [bk, bv] of Object.entries(v))
                b[snake(bk)] = bv;
            into.backoff = b;
        }
        else
            into[snake(k)] = v;
    }
    return into;
}

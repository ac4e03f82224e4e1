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

import * as http from "node:http";
import * as https from "node:https";
import { ConnectionError, MusterError, TimeoutError, errorFromAnswer } from "./errors.js";

/** Default control plane when neither the options nor `MUSTER_SERVER` name one. */
export const DEFAULT_SERVER = "http://127.0.0.1:8080";

/** Timeout of a call that is not a long-poll, ms. */
export const CALL_TIMEOUT_MS = 15_000;

/**
 * Error codes of a request that never reached a server: safe to send to the next one.
 * A reset of an open connection is not here: the request may have been processed.
 */
const NOT_SENT = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EADDRNOTAVAIL",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** Server URLs from an option, or `MUSTER_SERVER` (comma-separated), or the default. */
export function resolveServers(server: string | string[] | undefined): string[] {
  let list: string[];
  if (Array.isArray(server)) list = server;
  else if (typeof server === "string") list = server.split(",");
  else list = (process.env.MUSTER_SERVER ?? DEFAULT_SERVER).split(",");
  const out = list.map((s) => s.trim().replace(/\/+$/, "")).filter((s) => s !== "");
  if (out.length === 0) throw new TypeError("no control-plane URL given (server option or MUSTER_SERVER)");
  for (const s of out) {
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      throw new TypeError(`not a URL: ${JSON.stringify(s)}`);
    }
    if (u.protocol !== "http:" && u.protocol !== "https:") throw new TypeError(`not an http(s) URL: ${s}`);
  }
  return out;
}

/** The token from an option or `MUSTER_TOKEN`; empty means none. */
export function resolveToken(token: string | undefined): string | undefined {
  const t = token ?? process.env.MUSTER_TOKEN;
  return t === undefined || t.trim() === "" ? undefined : t.trim();
}

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

/** What one exchange gave: status, `Retry-After` and the body as text. */
interface Answer {
  status: number;
  retryAfter: string | null;
  text: string;
}

/** One control plane, or several tried in turn. */
export class Transport {
  readonly servers: readonly string[];
  private index = 0;
  private readonly fetchFn: typeof fetch | undefined;
  // Keep-alive agents: a connection per concurrent call, reused. Idle sockets do not
  // hold the process open (the agent unrefs them).
  private readonly httpAgent = new http.Agent({ keepAlive: true });
  private readonly httpsAgent = new https.Agent({ keepAlive: true });

  /** `fetchFn`: a `fetch` to send every call with instead of `node:http`. */
  constructor(servers: string[], fetchFn?: typeof fetch) {
    this.servers = servers;
    this.fetchFn = fetchFn;
  }

  /** Closes the idle keep-alive connections (calls still out finish). */
  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  /** The URL calls go to now. */
  get current(): string {
    return this.servers[this.index % this.servers.length]!;
  }

  /**
   * One call; the parsed JSON answer (`null` for an empty one). Moves on to the next
   * server when a server cannot be connected to (each is tried once per call).
   * @throws {MusterError} an error answer, typed by status; {@link ConnectionError}
   * when no answer came.
   */
  async call<T>(method: string, path: string, opts: CallOptions = {}): Promise<T> {
    const n = this.servers.length;
    let last: MusterError | undefined;
    for (let tried = 0; tried < n; tried++) {
      const idx = this.index % n;
      const url = this.servers[idx] + path;
      try {
        return await this.once<T>(method, url, path, opts);
      } catch (e) {
        if (e instanceof ConnectionError && !(e instanceof TimeoutError) && n > 1 && notSent(e.cause)) {
          // Fail over; a concurrent call may already have moved on.
          if (this.index % n === idx) this.index = (idx + 1) % n;
          last = e;
          continue;
        }
        throw e;
      }
    }
    throw last!;
  }

  private async once<T>(method: string, url: string, path: string, opts: CallOptions): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? CALL_TIMEOUT_MS;
    // One controller and one cleared timer per call: cheaper than AbortSignal.timeout
    // plus AbortSignal.any, whose timers and signals outlive the call.
    const ctl = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ctl.abort();
    }, timeoutMs);
    const outer = opts.signal;
    const onAbort = () => ctl.abort(outer?.reason);
    if (outer) {
      if (outer.aborted) ctl.abort(outer.reason);
      else outer.addEventListener("abort", onAbort, { once: true });
    }
    const headers: Record<string, string> = { accept: "application/json" };
    if (opts.body !== undefined) headers["content-type"] = "application/json";
    if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
    if (opts.headers) Object.assign(headers, opts.headers);
    let res: Answer;
    try {
      res = this.fetchFn
        ? await viaFetch(this.fetchFn, method, url, headers, opts.body, ctl.signal)
        : await this.viaNode(method, url, headers, opts.body, ctl.signal);
    } catch (e) {
      if (outer?.aborted) throw outer.reason;
      if (timedOut) throw new TimeoutError(url, timeoutMs, { method, path, cause: e });
      throw new ConnectionError(url, describe(e), { method, path, cause: e });
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onAbort);
    }
    const text = res.text;
    if (res.status >= 200 && res.status < 300) {
      if (text === "") return null as T;
      try {
        return JSON.parse(text) as T;
      } catch (e) {
        throw new MusterError(
          { status: res.status, code: "bad_answer", detail: `the answer is not JSON: ${text.slice(0, 200)}` },
          { method, path, cause: e },
        );
      }
    }
    const retryAfter = res.retryAfter;
    let retryAfterMs: number | undefined;
    if (retryAfter !== null && /^\s*\d+\s*$/.test(retryAfter)) retryAfterMs = Number(retryAfter) * 1000;
    throw errorFromAnswer(res.status, text, { method, path, retryAfterMs });
  }

  /** One exchange over `node:http(s)`; rejects with the socket's error (its `code` kept). */
  private async viaNode(
    method: string,
    url: string,
    headers: Record<string, string>,
    body: string | undefined,
    signal: AbortSignal,
  ): Promise<Answer> {
    // One turn of the event loop first: a kept-alive connection that its server closed
    // in this turn (a server killed a moment ago) is then known closed and not reused, so
    // the call connects afresh, and a dead server shows as "refused" (never sent: safe to
    // send to the next server) instead of a reset that may have been processed.
    await new Promise<void>((r) => setImmediate(r));
    return new Promise<Answer>((resolve, reject) => {
      const u = new URL(url);
      const tls = u.protocol === "https:";
      const payload = body === undefined ? undefined : Buffer.from(body, "utf8");
      if (payload) headers["content-length"] = String(payload.length);
      const req = (tls ? https : http).request(
        u,
        { method, headers, agent: tls ? this.httpsAgent : this.httpAgent, signal },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", reject);
          res.on("end", () => {
            const ra = res.headers["retry-after"];
            resolve({
              status: res.statusCode ?? 0,
              retryAfter: typeof ra === "string" ? ra : null,
              text: chunks.length === 1 ? chunks[0]!.toString("utf8") : Buffer.concat(chunks).toString("utf8"),
            });
          });
          // A connection lost mid-answer closes the response without "end".
          res.on("close", () => {
            if (!res.complete) reject(Object.assign(new Error("the answer was cut off"), { code: "ECONNRESET" }));
          });
        },
      );
      req.on("error", reject);
      req.end(payload);
    });
  }
}

/** One exchange through a `fetch`. */
async function viaFetch(
  fetchFn: typeof fetch,
  method: string,
  url: string,
  headers: Record<string, string>,
  body: string | undefined,
  signal: AbortSignal,
): Promise<Answer> {
  const res = await fetchFn(url, { method, headers, body, signal });
  const text = await res.text();
  return { status: res.status, retryAfter: res.headers.get("retry-after"), text };
}

/** True when the error (a socket's or a fetch failure's cause chain) says the request was not sent. */
export function notSent(e: unknown): boolean {
  for (let c: unknown = e, i = 0; c && i < 5; c = (c as { cause?: unknown }).cause, i++) {
    const code = (c as { code?: unknown }).code;
    if (typeof code === "string" && NOT_SENT.has(code)) return true;
    const errors = (c as { errors?: unknown }).errors;
    if (Array.isArray(errors) && errors.some((x) => NOT_SENT.has((x as { code?: string })?.code ?? ""))) return true;
  }
  return false;
}

/** A fetch failure as one line: its message and the causes under it. */
function describe(e: unknown): string {
  const parts: string[] = [];
  for (let c: unknown = e, i = 0; c && i < 5; c = (c as { cause?: unknown }).cause, i++) {
    const m = c instanceof Error ? c.message : String(c);
    const code = (c as { code?: unknown }).code;
    const s = typeof code === "string" && !m.includes(code) ? `${m} (${code})` : m;
    if (s && !parts.includes(s)) parts.push(s);
  }
  return parts.join(": ") || "unknown error";
}

/** Exponential backoff with jitter: each delay is between half and all of the step. */
export class Backoff {
  private cur: number;
  constructor(
    private readonly min: number,
    private readonly max: number,
  ) {
    this.cur = min;
  }
  reset(): void {
    this.cur = this.min;
  }
  next(): number {
    const d = this.cur * (0.5 + Math.random() * 0.5);
    this.cur = Math.min(this.cur * 2, this.max);
    return d;
  }
}

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

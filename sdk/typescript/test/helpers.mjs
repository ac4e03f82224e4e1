// Test support: a throwaway redis-server and real `muster serve` processes on free
// loopback ports, killed when the test file ends. No mocks.
//
// MUSTER_BIN names the binary (default: <repo>/target/debug/muster, the repo being two
// levels above sdk/typescript).

import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const SDK_DIR = path.resolve(HERE, "..");
export const REPO_DIR = path.resolve(SDK_DIR, "..", "..");
export const MUSTER_BIN = process.env.MUSTER_BIN || path.join(REPO_DIR, "target", "debug", "muster");
export const ADMIN_TOKEN = "test-admin-token-0123456789";

const children = new Set();
function track(p) {
  children.add(p);
  p.once("exit", () => children.delete(p));
  return p;
}
function killAll() {
  for (const p of children) {
    try {
      p.kill("SIGKILL");
    } catch {}
  }
}
process.once("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM"]) process.once(sig, () => (killAll(), process.exit(130)));

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort() {
  const srv = net.createServer();
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const { port } = srv.address();
  srv.close();
  await once(srv, "close");
  return port;
}

/** Polls `fn` until it returns a truthy value (returned) or `ms` passes (throws). */
export async function until(fn, { ms = 10_000, every = 50, what = "condition" } = {}) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last}` : ""}`);
    await sleep(every);
  }
}

function redisPing(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    let buf = "";
    s.on("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      buf += d;
      if (buf.includes("\r\n")) {
        s.destroy();
        resolve(buf.startsWith("+PONG"));
      }
    });
    s.on("error", () => resolve(false));
  });
}

/** A throwaway redis-server (no persistence) on a free port. */
export class Redis {
  constructor(port) {
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
  }
  static async start(port) {
    const r = new Redis(port ?? (await freePort()));
    await r.start();
    return r;
  }
  async start() {
    this.proc = track(
      spawn("redis-server", ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
        stdio: ["ignore", "ignore", "inherit"],
      }),
    );
    await until(() => redisPing(this.port), { ms: 10_000, what: `redis on ${this.port}` });
  }
  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    const p = this.proc;
    p.kill("SIGKILL");
    if (p.exitCode === null && p.signalCode === null) await once(p, "exit");
  }
}

/** A `muster serve` on a free port, with the admin token and short intervals. */
export class Muster {
  constructor(redis, port, extra = []) {
    this.redis = redis;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.token = ADMIN_TOKEN;
    this.extra = extra;
    this.log = [];
  }
  static async start(redis, { port, args = [] } = {}) {
    if (!existsSync(MUSTER_BIN)) throw new Error(`no muster binary at ${MUSTER_BIN}: build it (cargo build --bins) or set MUSTER_BIN`);
    const m = new Muster(redis, port ?? (await freePort()), args);
    await m.start();
    return m;
  }
  async start() {
    const args = [
      "serve",
      "--listen",
      `127.0.0.1:${this.port}`,
      "--redis-url",
      this.redis.url,
      "--heartbeat-interval-ms",
      "500",
      "--reaper-interval-ms",
      "200",
      ...this.extra,
    ];
    this.proc = track(
      spawn(MUSTER_BIN, args, {
        env: { ...process.env, MUSTER_ADMIN_TOKEN: ADMIN_TOKEN, RUST_LOG: process.env.RUST_LOG || "warn" },
        stdio: ["ignore", "ignore", "pipe"],
      }),
    );
    this.proc.stderr.on("data", (d) => {
      this.log.push(String(d));
      if (this.log.length > 200) this.log.shift();
      if (process.env.MUSTER_TEST_VERBOSE) process.stderr.write(d);
    });
    const p = this.proc;
    await until(
      async () => {
        if (p.exitCode !== null) throw new Error(`muster serve exited ${p.exitCode}: ${this.log.join("")}`);
        const r = await fetch(`${this.url}/readyz`).catch(() => null);
        return r?.ok;
      },
      { ms: 20_000, what: `muster serve on ${this.port}` },
    );
  }
  async stop(signal = "SIGKILL") {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const p = this.proc;
    p.kill(signal);
    await once(p, "exit");
  }
  async restart() {
    await this.stop();
    await this.start();
  }
}

/** Redis plus one muster server, for a test file. */
export async function startStack(opts = {}) {
  const redis = await Redis.start();
  const muster = await Muster.start(redis, opts);
  return {
    redis,
    muster,
    url: muster.url,
    token: ADMIN_TOKEN,
    async stop() {
      await muster.stop();
      await redis.stop();
    },
  };
}

let seq = 0;
/** A queue name no other test uses. */
export function queueName(prefix = "q") {
  return `${prefix}-${process.pid}-${++seq}-${Math.random().toString(36).slice(2, 8)}`;
}

/** A logger that keeps lines (for assertions) and prints them when MUSTER_TEST_VERBOSE is set. */
export function memoryLogger() {
  const lines = [];
  const at = (level) => (msg, fields) => {
    lines.push({ at: new Date().toISOString(), level, msg, fields });
    if (process.env.MUSTER_TEST_VERBOSE) process.stderr.write(`[worker ${level}] ${msg} ${fields ? JSON.stringify(fields) : ""}\n`);
  };
  return { lines, debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** Starts `node <fixture>` with env; collects stdout lines and stderr. */
export function spawnNode(script, env = {}) {
  const p = track(
    spawn(process.execPath, [script], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
  p.lines = [];
  p.stderrText = "";
  let buf = "";
  p.stdout.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      p.lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  p.stderr.on("data", (d) => {
    p.stderrText += d;
    if (process.env.MUSTER_TEST_VERBOSE) process.stderr.write(d);
  });
  p.exited = new Promise((resolve) => p.once("exit", (code, signal) => resolve({ code, signal })));
  return p;
}

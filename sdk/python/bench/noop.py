"""No-op throughput of one Python worker process.

    python bench/noop.py [-n 20000] [--concurrency 64] [--handler async|sync] [--sleep S]
                         [--server URL --token T [--queue Q] | --muster-bin PATH] [--json]

Without ``--server`` it starts a private redis-server and ``muster serve`` (from
``--muster-bin``, else MUSTER_BIN, else <repo>/target/release/muster or debug). It
submits N no-op tasks with ``submit_many`` (enqueue rate), then runs one Worker in this
process on the full queue and reports N / (last handler end - first handler start), the
same measure as the peers' benchmark, and the worker's CPU time per task.

With ``--queue`` the queue already holds the N tasks (``scripts/bench-sdk`` submits
them and measures this process from outside): nothing is submitted, the worker runs on
that queue and exits after its N-th handler call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import httpx  # noqa: E402

from muster import Client, Worker  # noqa: E402

REPO = HERE.parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server at {url} not ready")


def start_stack(binary: str, tmp: str):
    rport, sport = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    token = uuid.uuid4().hex
    serve = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{sport}", "--redis-url",
                              f"redis://127.0.0.1:{rport}"], env={**os.environ, "MUSTER_ADMIN_TOKEN": token,
                                                                 "RUST_LOG": "warn"},
                             stdout=open(os.path.join(tmp, "serve.log"), "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{sport}"
    wait_ready(url)
    return url, token, [serve, redis]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def default_binary() -> str:
    if os.environ.get("MUSTER_BIN"):
        return os.environ["MUSTER_BIN"]
    for p in ("release", "debug"):
        b = REPO / "target" / p / "muster"
        if b.exists():
            return str(b)
    raise SystemExit("no muster binary: pass --muster-bin or set MUSTER_BIN")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--prefetch", type=int, default=0)
    ap.add_argument("--handler", choices=["async", "sync"], default="async")
    ap.add_argument("--server")
    ap.add_argument("--token")
    ap.add_argument("--muster-bin")
    ap.add_argument("--queue", help="a queue already holding the N tasks: submit nothing, only work")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds each handler sleeps (asyncio.sleep / time.sleep)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    procs = []
    tmp = tempfile.mkdtemp(prefix="muster-pybench-")
    if a.server:
        url, token = a.server, a.token
    else:
        binary = a.muster_bin or default_binary()
        url, token, procs = start_stack(binary, tmp)
    try:
        enqueue_s = None
        if a.queue:
            q = a.queue
        else:
            q = "bench" + uuid.uuid4().hex[:8]
            with Client(url, token=token, timeout=120) as c:
                t0 = time.perf_counter()
                for i in range(0, a.n, 10000):
                    c.submit_many([{"kind": "noop", "payload": {"i": j}} for j in range(i, min(a.n, i + 10000))],
                                  queue=q)
                enqueue_s = time.perf_counter() - t0

        w = Worker(queues=[q], concurrency=a.concurrency, prefetch=a.prefetch, server=url, token=token,
                   handle_signals=False)
        state = {"n": 0, "first": None, "last": None}
        n = a.n

        if a.handler == "async":
            @w.task("noop")
            async def noop(payload, ctx):
                if a.sleep:
                    await asyncio.sleep(a.sleep)
                now = time.perf_counter()
                if state["first"] is None:
                    state["first"] = now
                state["n"] += 1
                state["last"] = now
                if state["n"] == n:
                    w.stop()
        else:
            import threading
            lock = threading.Lock()

            @w.task("noop")
            def noop(payload, ctx):
                if a.sleep:
                    time.sleep(a.sleep)
                with lock:
                    now = time.perf_counter()
                    if state["first"] is None:
                        state["first"] = now
                    state["n"] += 1
                    state["last"] = now
                    if state["n"] == n:
                        w.stop()

        others0 = {p.pid: proc_cpu(p.pid) for p in procs}
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        spawn = time.perf_counter()
        asyncio.run(w.run_async())
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        others = {p.pid: proc_cpu(p.pid) - others0[p.pid] for p in procs}
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        secs = state["last"] - state["first"]
        out = {
            "n": n,
            "handler": a.handler + (f" sleeping {a.sleep}s" if a.sleep else ""),
            "concurrency": a.concurrency,
            "enqueue_per_s": round(n / enqueue_s) if enqueue_s else None,
            "process_per_s": round(n / secs) if secs > 0 else None,
            "process_incl_startup_per_s": round(n / (state["last"] - spawn)),
            "worker_cpu_us_per_task": round(cpu / n * 1e6, 1),
            **({"server_cpu_us_per_task": round(others[procs[0].pid] / n * 1e6, 1),
                "redis_cpu_us_per_task": round(others[procs[1].pid] / n * 1e6, 1)} if procs else {}),
            "lease_calls": w.stats["lease_calls"],
            "report_calls": w.stats["report_calls"],
        }
        print(json.dumps(out) if a.json else "\n".join(f"{k:28} {v}" for k, v in out.items()))
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()

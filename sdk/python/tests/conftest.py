"""Fixtures: a throwaway redis-server and a real ``muster serve`` (no mocks).

One Redis and one server serve the whole session; each test isolates itself with a
queue of its own. Tests that restart the server get one of their own (same Redis,
their own key namespace). The binary comes from ``MUSTER_BIN``, else
``<repo>/target/debug/muster``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional

import httpx
import pytest

from muster import Client, Worker

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
MUSTER_BIN = os.environ.get("MUSTER_BIN") or str(REPO / "target" / "debug" / "muster")
ADMIN_TOKEN = "sdk-python-test-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], object], timeout: float = 10.0, every: float = 0.02, what: str = "condition"):
    """Polls ``pred`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class RedisProc:
    def __init__(self, tmp: Path, durable: bool = False) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.log = tmp / f"redis-{self.port}.log"
        self.dir = tmp / f"redis-{self.port}"
        self.durable = durable  # an AOF written on every command: survives kill -9
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        persistence = ["--appendonly", "no"]
        if self.durable:
            self.dir.mkdir(exist_ok=True)
            persistence = ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        wait_until(self._pong, 10, what="redis PING")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class ServerProc:
    """``muster serve`` on a free port; restartable on the same port."""

    def __init__(self, redis_url: str, tmp: Path, namespace: str = "muster") -> None:
        if not os.path.exists(MUSTER_BIN):
            pytest.exit(f"no muster binary at {MUSTER_BIN}: build it (cargo build --bins) or set MUSTER_BIN", 2)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis_url = redis_url
        self.namespace = namespace
        self.log = tmp / f"serve-{self.port}.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        env = {**os.environ, "MUSTER_ADMIN_TOKEN": ADMIN_TOKEN, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.proc = subprocess.Popen(
            [MUSTER_BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--redis-url", self.redis_url,
             "--namespace", self.namespace, "--heartbeat-interval-ms", "300", "--reaper-interval-ms", "100"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env,
        )
        wait_until(self._ready, 30, every=0.05, what=f"muster serve on {self.url} (log: {self.log})")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"muster serve exited with {self.proc.returncode}; log: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("muster")


@pytest.fixture(scope="session")
def redis(session_tmp):
    r = RedisProc(session_tmp)
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def server(redis, session_tmp):
    s = ServerProc(redis.url, session_tmp)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def own_server(redis, session_tmp):
    """A server of this test alone (it may be killed and restarted)."""
    s = ServerProc(redis.url, session_tmp, namespace="t" + uuid.uuid4().hex[:8])
    s.start()
    yield s
    s.kill()


@pytest.fixture
def durable_redis(session_tmp):
    """A Redis of this test alone that keeps its data across kill -9 and restart."""
    r = RedisProc(session_tmp, durable=True)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def client(server):
    c = Client(server.url, token=ADMIN_TOKEN)
    yield c
    c.close()


@pytest.fixture
def queue() -> str:
    return "q" + uuid.uuid4().hex[:12]


class ThreadWorker:
    """A Worker run on a thread of the test process (no signals there: stopped with
    ``worker.stop()``)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            self.error = e

    def start(self) -> "ThreadWorker":
        self.thread.start()
        wait_until(lambda: self.worker.node_id or not self.thread.is_alive(), 15, what="worker registration")
        if self.error:
            raise self.error
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"


@pytest.fixture
def start_worker(server):
    """``start_worker(worker)`` runs it on a thread (server/token defaulted to the
    session server); every one is stopped at teardown."""
    started: List[ThreadWorker] = []

    def start(worker: Worker) -> ThreadWorker:
        if worker.server is None:
            worker.server = server.url
        if worker.token is None:
            worker.token = ADMIN_TOKEN
        tw = ThreadWorker(worker).start()
        started.append(tw)
        return tw

    yield start
    for tw in started:
        if tw.thread.is_alive():
            tw.stop()


class WorkerProc:
    """``python -m muster worker apps.<target>`` as a child process."""

    def __init__(self, target: str, server_url: str, tmp: Path, env: Dict[str, str], args: List[str]) -> None:
        self.log = tmp / f"worker-{uuid.uuid4().hex[:6]}.log"
        full_env = {
            **os.environ,
            "MUSTER_SERVER": server_url,
            "MUSTER_TOKEN": ADMIN_TOKEN,
            "PYTHONPATH": os.pathsep.join([str(HERE)] + [p for p in sys.path if p]),
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "muster", "worker", f"apps.{target}", *args],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=full_env, cwd=str(HERE),
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def spawn_worker(server, tmp_path):
    procs: List[WorkerProc] = []

    def spawn(target: str, env: Optional[Dict[str, str]] = None, args: Optional[List[str]] = None,
              server_url: Optional[str] = None) -> WorkerProc:
        """``target`` is ``module:attr`` under tests/apps (attr defaults to worker)."""
        p = WorkerProc(target, server_url or server.url, tmp_path, env or {}, args or [])
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)

"""The worker: runs Python handlers in-process over the HTTP agent protocol.

# Shape
Everything protocol-side runs on one asyncio event loop over keep-alive connections
(its own lean HTTP/1.1 client, ``_http11``; ``http="httpx"`` for httpx). The reference
is the Rust agent in ``src/agent/mod.rs``:

- registration as a node (queues, tags, capacity = ``concurrency``, name); a node the
  control plane forgot (404/401 on a node route) is registered again;
- the lease loop: waits until a slot is free (no polling while full), then long-polls
  ``POST /v1/nodes/{id}/lease`` for as many tasks as there are free slots;
- async handlers run as tasks on the same loop (no thread hop); sync handlers run on a
  pool of threads whose completions are handed back to the loop in bunches (one
  wake-up of the loop for however many finished meanwhile);
- one report flusher: every outcome ready when a flush starts goes out in one
  ``POST /v1/nodes/{id}/reports``; outcomes arriving during a flush go in the next;
  each call also asks for as many new tasks as there are free slots (``lease_max``),
  so a busy worker takes its next tasks with its reports and the long-poll is for the
  moments nothing waits to be reported;
- renewals: one loop wakes at the earliest renewal due (a third of each lease's TTL)
  and renews the leases due together, in one ``POST /v1/nodes/{id}/extend``; progress
  travels with ``POST /v1/tasks/{id}/extend`` of its task; a refused renewal (404,
  409, or ``conflict`` / ``not_found`` in the batch) stops the task and reports
  nothing, as the lease is someone else's now;
- heartbeats at the interval the server gives; its ``cancel`` list (and an extend's
  ``cancel_requested``) stops the named tasks;
- drain on SIGTERM/SIGINT or :meth:`Worker.stop`: no more leases, the node is marked
  draining, running tasks get ``grace`` seconds, the rest are handed back (failed,
  retryable), reports are flushed and the node deregisters.

The happy path of a task costs no HTTP call of its own: one lease call brings many
tasks and one report call answers many.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import queue as _queue
import signal
import socket
import sys
import threading
import traceback
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Union

import httpx

from . import _transport as tr
from ._http11 import Broken, ConnectFailed, Pool
from .client import Task
from .errors import Conflict, Forbidden, Invalid, MusterError, NonRetryable, NotFound, TransportError, Unauthorized

__all__ = ["Worker", "Context"]

log = logging.getLogger("muster.worker")

#: Long-poll asked of ``lease`` (seconds).
LEASE_WAIT = 20.0
#: Timeout of every call except the lease long-poll (seconds).
CALL_TIMEOUT = 15.0
#: Extra time the HTTP client gives a long-poll beyond its ``wait_ms``.
LONG_POLL_SLACK = 10.0
#: Most reports in one call (the server takes up to 10,000).
MAX_REPORT_BATCH = 1000
#: Most bytes of reports in one call (the server takes bodies up to 32 MiB).
MAX_REPORT_BYTES = 8 << 20
#: Largest result the server stores (its MAX_PAYLOAD); a larger one fails the task.
MAX_RESULT_BYTES = 1 << 20
#: How long a batch of reports is retried before it is given up (the leases will have
#: expired by then and the tasks been retried anyway).
REPORT_RETRY_FOR = 300.0
#: Shortest gap between two progress updates of one task sent to the server.
PROGRESS_MIN_GAP = 0.25
# Most leases renewed by one POST /v1/nodes/{id}/extend (the route's limit).
MAX_EXTEND_BATCH = 1000
#: Characters of traceback kept in the error of a failed attempt.
TRACEBACK_CHARS = 4000

CANCELLED_ERROR = "cancelled"
SHUTDOWN_ERROR = "worker shutting down"

Handler = Callable[[Any, "Context"], Any]

_PY312 = sys.version_info >= (3, 12)


def default_name() -> str:
    """Host name and pid, like the Rust agent's."""
    return f"{socket.gethostname() or 'worker'}-{os.getpid()}"


class Context:
    """What a handler knows about the attempt it runs (one per leased task).

    Attributes:
        task_id: the task's id.
        attempt: this attempt's number, 1-based.
        fence: the lease's fence number: pass it to anything you write outside muster
            so that a store can refuse a stale writer.
        kind, queue, payload: of the task.
        lease_token: the lease's token (the worker renews and reports with it).
        node_id: the id of this worker's node.
    """

    # The worker's own bookkeeping of the lease lives here too (underscored): one
    # object per task keeps the hot path short.
    __slots__ = (
        "task_id", "_lease", "_t", "_run", "_reason", "_tev", "_aev", "_token", "_ttl", "_deadline",
        "_renew_at", "_atask", "_kill_timer", "_finished", "_reported", "_extending", "_progress",
        "_progress_dirty", "_last_extend",
    )

    def __init__(self, run: "_Run", lease: Dict[str, Any], task: Dict[str, Any], now: float, ttl: float) -> None:
        self.task_id: str = task["id"]
        self._lease = lease
        self._t = task
        self._run = run
        self._reason: Optional[str] = None
        self._tev: Optional[threading.Event] = None
        self._aev: Optional[asyncio.Event] = None
        self._token: str = lease["lease_token"]
        self._ttl = ttl
        self._deadline = now + ttl  # our conservative estimate of the lease's end
        self._renew_at = now + ttl / 3
        self._atask: Optional[asyncio.Task] = None
        self._kill_timer: Optional[asyncio.TimerHandle] = None
        self._finished = False  # the handler is over
        self._reported = False  # an outcome is queued (or none will be: lease lost)
        self._extending = False
        self._progress: Any = None
        self._progress_dirty = False
        self._last_extend = now

    @property
    def attempt(self) -> int:
        return int(self._t.get("attempts") or 1)

    @property
    def fence(self) -> int:
        f = self._lease.get("fence")
        return int(f if f is not None else self._t.get("fence", 0))

    @property
    def kind(self) -> str:
        return self._t.get("kind", "")

    @property
    def queue(self) -> str:
        return self._t.get("queue", "")

    @property
    def payload(self) -> Any:
        return self._t.get("payload")

    @property
    def lease_token(self) -> str:
        return self._token

    @property
    def node_id(self) -> str:
        reg = self._run.reg
        return reg.id if reg is not None else ""

    @property
    def task(self) -> Task:
        """The task as leased (state ``running``)."""
        return Task(self._t)

    @property
    def cancelled(self) -> bool:
        """True once the handler should stop: the task was cancelled, its lease was
        lost, it ran past ``max_run_ms``, or the worker's grace period is over.

        Async handlers are also cancelled at their next ``await`` (CancelledError);
        sync handlers cannot be interrupted and should check this flag (or wait on
        :attr:`cancel_event`)."""
        return self._reason is not None

    @property
    def cancel_reason(self) -> Optional[str]:
        """``None``, or why the handler should stop: ``"cancelled"``, ``"lease_lost"``,
        ``"timeout"`` or ``"shutdown"``."""
        return self._reason

    @property
    def cancel_event(self) -> threading.Event:
        """A ``threading.Event`` set on cancellation, for sync handlers:
        ``if ctx.cancel_event.wait(5): return``."""
        ev = self._tev
        if ev is None:
            with _EVENT_LOCK:
                if self._tev is None:
                    self._tev = threading.Event()
                ev = self._tev
            # The loop sets the reason before it reads _tev: one of us sees the other.
            if self._reason is not None:
                ev.set()
        return ev

    async def wait_cancelled(self, timeout: Optional[float] = None) -> bool:
        """Waits (async) until cancelled, at most ``timeout`` seconds; True if cancelled."""
        if self._reason is not None:
            return True
        if self._aev is None:
            self._aev = asyncio.Event()
        try:
            await asyncio.wait_for(self._aev.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def progress(self, data: Any) -> None:
        """Records progress (any JSON, e.g. ``{"done": 40, "total": 100}``). It reaches
        the server with the next lease renewal, at most every 0.25 s per task; safe to
        call from any thread."""
        tr.dumps(data)  # fail in the handler, not later in the worker
        run = self._run
        if run.loop_thread == threading.get_ident():
            run.progress(self, data)
        else:
            try:
                run.loop.call_soon_threadsafe(run.progress, self, data)
            except RuntimeError:  # the loop is closed: the worker is gone
                pass

    def _stop(self, reason: str) -> None:
        self._reason = reason
        if self._tev is not None:
            self._tev.set()
        if self._aev is not None:
            self._aev.set()

    def __repr__(self) -> str:
        return f"Context(task_id={self.task_id!r}, attempt={self.attempt}, fence={self.fence})"


_EVENT_LOCK = threading.Lock()


class _Registration:
    def __init__(self, node_id: str, token: str, heartbeat: float) -> None:
        self.id = node_id
        self.token = token
        self.heartbeat = heartbeat
        self.headers = {**tr.headers(token), "content-type": "application/json"}


def _report_item(task_id: str, token: str, outcome: str, value: Any = None, retryable: Optional[bool] = None) -> bytes:
    item: Dict[str, Any] = {"task_id": task_id, "lease_token": token, "outcome": outcome}
    if outcome == "succeeded":
        item["result"] = value
    else:
        item["error"] = value
        if retryable is not None:
            item["retryable"] = retryable
    return tr.dumps(item)


def _success_item(task_id: str, token: str, result: Any) -> bytes:
    try:
        item = _report_item(task_id, token, "succeeded", result)
    except (TypeError, ValueError) as e:
        return _report_item(task_id, token, "failed", f"the handler's result is not JSON: {e}", False)
    if len(item) > MAX_RESULT_BYTES:
        size = len(tr.dumps(result))
        if size > MAX_RESULT_BYTES:
            return _report_item(task_id, token, "failed",
                                f"the result is {size} bytes; the server stores at most {MAX_RESULT_BYTES}", False)
    return item


def _error_text(e: BaseException) -> str:
    """Message and the tail of the traceback, for a retryable failure."""
    head = f"{type(e).__name__}: {e}"
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    if len(tb) > TRACEBACK_CHARS:
        tb = "..." + tb[-TRACEBACK_CHARS:]
    return f"{head}\n\n{tb.rstrip()}"


def _failure_item(task_id: str, token: str, e: BaseException) -> bytes:
    if isinstance(e, NonRetryable):
        return _report_item(task_id, token, "failed", str(e) or type(e).__name__, False)
    return _report_item(task_id, token, "failed", _error_text(e), True)


class _Threads:
    """Threads for sync handlers. Completions go to a shared list and wake the loop
    once per bunch (``call_soon_threadsafe`` writes to a pipe: not once per task)."""

    def __init__(self, run: "_Run", size: int) -> None:
        self._finish = run.finish
        self._loop = run.loop
        self._size = max(1, size)
        self._q: "_queue.SimpleQueue[Any]" = _queue.SimpleQueue()
        self._threads: List[threading.Thread] = []
        self._busy = 0  # loop thread only
        self._done: List[Any] = []
        self._lock = threading.Lock()
        self._wake_pending = False

    def submit(self, ctx: Context, fn: Handler) -> None:
        self._busy += 1
        if self._busy > len(self._threads) and len(self._threads) < self._size:
            t = threading.Thread(target=self._work, name=f"muster-handler-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()
        self._q.put((ctx, fn))

    def close(self) -> None:
        for _ in self._threads:
            self._q.put(None)

    def _work(self) -> None:
        q = self._q
        while True:
            item = q.get()
            if item is None:
                return
            ctx, fn = item
            out: Optional[bytes]
            if ctx._reason is not None:
                out = None  # stopped while it waited for a thread: its report is queued
            else:
                try:
                    result = fn(ctx._t.get("payload"), ctx)
                    out = _success_item(ctx.task_id, ctx._token, result)
                except BaseException as e:  # noqa: BLE001 - every failure is reported
                    out = _failure_item(ctx.task_id, ctx._token, e)
            with self._lock:
                self._done.append((ctx, out))
                wake = not self._wake_pending
                self._wake_pending = True
            if wake:
                try:
                    self._loop.call_soon_threadsafe(self._drain)
                except RuntimeError:  # the loop is closed: the worker is gone
                    return

    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._wake_pending = False
        self._busy -= len(done)
        finish = self._finish
        for ctx, out in done:
            finish(ctx, out)


class Worker:
    """Runs handlers for the tasks of ``queues``, ``concurrency`` at a time.

    ``server`` is one URL, a comma-separated list or a sequence (fail-over in turn),
    else ``MUSTER_SERVER``; ``token`` (else ``MUSTER_TOKEN``) must be allowed to
    register nodes (the ``agent`` or ``admin`` role). ``threads`` caps the threads of
    sync handlers (default: ``concurrency``). ``prefetch`` tasks may be leased beyond
    ``concurrency`` and wait in the worker for a free slot (default 0: leases are sized
    to the free slots); their leases are renewed while they wait, so short tasks that
    end in waves start at once, but prefetched tasks are held from other workers
    meanwhile (keep it small for long tasks). ``grace`` is how long running tasks may
    finish after a drain starts. ``register_timeout`` is how long the first
    registration retries a server that is away (None: forever); a refused token is
    never retried. ``http="httpx"`` sends the worker's calls through ``httpx`` (proxy
    settings, ...) instead of its own lean HTTP/1.1 client.

    ::

        worker = Worker(queues=["math"], concurrency=64)

        @worker.task("add")
        def add(payload, ctx):
            return {"sum": payload["a"] + payload["b"]}

        worker.run()
    """

    def __init__(
        self,
        queues: Union[str, Sequence[str]] = ("default",),
        concurrency: int = 64,
        *,
        prefetch: int = 0,
        server: tr.ServerSpec = None,
        token: Optional[str] = None,
        tags: Sequence[str] = (),
        name: Optional[str] = None,
        threads: Optional[int] = None,
        grace: float = 30.0,
        lease_wait: float = LEASE_WAIT,
        register_timeout: Optional[float] = 60.0,
        handle_signals: bool = True,
        http: str = "builtin",
    ) -> None:
        if http not in ("builtin", "httpx"):
            raise ValueError("http must be 'builtin' or 'httpx'")
        self.queues: List[str] = [queues] if isinstance(queues, str) else list(queues)
        self.concurrency = int(concurrency)
        self.prefetch = int(prefetch)
        self.server = server
        self.token = token
        self.tags = list(tags)
        self.name = name
        self.threads = threads
        self.grace = float(grace)
        self.lease_wait = float(lease_wait)
        self.register_timeout = register_timeout
        self.handle_signals = handle_signals
        self.http = http
        self.handlers: Dict[str, Handler] = {}
        self._async: Dict[str, bool] = {}
        # Set while running.
        self.node_id: Optional[str] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[int] = None
        self._stop_requested: Optional[asyncio.Event] = None
        self._force: Optional[asyncio.Event] = None
        self._pending_stop: Optional[bool] = None  # stop() before the loop started
        self._state_lock = threading.Lock()  # _loop and _pending_stop, for stop()
        #: Counters of the current or last run: tasks leased, succeeded and failed (as
        #: reported), and the lease and report calls that carried them.
        self.stats = {"leased": 0, "succeeded": 0, "failed": 0, "lease_calls": 0, "report_calls": 0}

    # -- registration of handlers ---------------------------------------------------
    def task(self, kind: str) -> Callable[[Handler], Handler]:
        """Decorator: ``@worker.task("add")`` on ``def f(payload, ctx)`` or
        ``async def f(payload, ctx)``; returns the function unchanged."""

        def deco(fn: Handler) -> Handler:
            self.register(kind, fn)
            return fn

        return deco

    def register(self, kind: str, fn: Handler) -> None:
        """Registers ``fn`` as the handler of ``kind`` (see :meth:`task`)."""
        if not kind:
            raise ValueError("kind must not be empty")
        self.handlers[kind] = fn
        self._async[kind] = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)
        )

    # -- running --------------------------------------------------------------------
    def run(self) -> None:
        """Runs until SIGTERM/SIGINT (or :meth:`stop`), then drains and returns.

        Raises :class:`muster.Unauthorized` / :class:`muster.Forbidden` when the token
        is refused, :class:`muster.Invalid` for a node the server will not register,
        and :class:`muster.TransportError` when no server answered within
        ``register_timeout``."""
        asyncio.run(self.run_async())

    def stop(self, force: bool = False) -> None:
        """Starts the drain (thread-safe). ``force`` skips the grace period."""
        with self._state_lock:
            loop = self._loop
            if loop is None:
                self._pending_stop = bool(force) or bool(self._pending_stop)
                return
        try:
            loop.call_soon_threadsafe(self._request_stop, force)
        except RuntimeError:  # the loop closed meanwhile: nothing runs any more
            pass

    def _request_stop(self, force: bool = False) -> None:
        assert self._stop_requested is not None and self._force is not None
        if self._stop_requested.is_set() or force:
            if not self._force.is_set():
                if self._stop_requested.is_set():
                    log.warning("stop requested again: skipping the grace period")
                self._force.set()
        self._stop_requested.set()

    async def run_async(self) -> None:
        """:meth:`run` as a coroutine, on the running loop (signals are handled only
        when it runs in the main thread)."""
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.prefetch < 0 or self.concurrency + self.prefetch > 10_000:
            raise ValueError("prefetch must be 0 or more, and concurrency + prefetch at most 10000")
        if not self.queues:
            raise ValueError("give at least one queue")
        loop = asyncio.get_running_loop()
        with self._state_lock:
            if self._loop is not None:
                raise RuntimeError("this worker is already running")
            for k in self.stats:
                self.stats[k] = 0
            self._stop_requested = asyncio.Event()
            self._force = asyncio.Event()
            self._loop = loop
            self._loop_thread = threading.get_ident()
            if self._pending_stop is not None:
                self._request_stop(self._pending_stop)
        installed: List[int] = []
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):  # pragma: no cover - non-unix
                    pass
        try:
            await _Run(self, loop).main()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            with self._state_lock:
                self._loop = None
                self._loop_thread = None
                self._pending_stop = None
            self.node_id = None

    def _on_signal(self, sig: int) -> None:
        log.info("%s: draining", signal.Signals(sig).name)
        self._request_stop()

    _run: Optional["_Run"] = None


class _Run:
    """The state of one :meth:`Worker.run_async`."""

    def __init__(self, worker: Worker, loop: asyncio.AbstractEventLoop) -> None:
        self.w = worker
        self.loop = loop
        self.servers = tr.Servers(tr.parse_servers(worker.server))
        self.token = tr.resolve_token(worker.token)
        self.name = worker.name or default_name()
        # The hot path speaks HTTP/1.1 itself (see _http11); httpx on request.
        self.pool: Optional[Pool] = None
        self.http: Optional[httpx.AsyncClient] = None
        if worker.http == "httpx":
            self.http = httpx.AsyncClient(
                timeout=CALL_TIMEOUT,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=32),
            )
        else:
            self.pool = Pool(max_idle=32)
        self.reg: Optional[_Registration] = None
        self.jobs: Dict[str, Context] = {}
        self.loop_thread = threading.get_ident()
        self.renew_next = float("inf")  # when the renewal loop wakes next
        self.renew_wake = asyncio.Event()
        # Leases held: up to concurrency + prefetch; handlers at once: concurrency (async
        # ones wait on `running`; sync ones on the thread pool, sized to concurrency).
        self.free = worker.concurrency + worker.prefetch
        self.running = asyncio.Semaphore(worker.concurrency)
        self.slot_freed = asyncio.Event()
        self.idle = asyncio.Event()
        self.reports: List[bytes] = []
        self.report_wake = asyncio.Event()
        self.reports_closing = False
        # Slots held for the leases asked of calls out (the report call's lease_max and
        # the long-poll), the reports in the call out, and whether the server takes
        # lease_max (cleared when one older than this SDK refuses it). While reports
        # wait or are out, the report call leases for the free slots and the long-poll
        # holds back: a busy worker takes its next tasks with its reports.
        self.reserved = 0
        self.reports_out = 0
        self.lease_with_reports = True
        self.leasing = True
        self.reregister_lock = asyncio.Lock()
        self.lease_fut: Optional[asyncio.Future] = None
        self.fatal: Optional[BaseException] = None
        self.threads: Optional[_Threads] = None
        self.background: set = set()

    # -- HTTP -----------------------------------------------------------------------
    async def call(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        *,
        headers: Optional[dict] = None,
        timeout: float = CALL_TIMEOUT,
    ) -> Any:
        """One call with the node's token (or ``headers``), failing over to the next
        server when a connection cannot be opened."""
        hdrs = headers if headers is not None else self.reg.headers  # type: ignore[union-attr]
        n = len(self.servers.urls)
        err: Optional[TransportError] = None
        for _ in range(n):
            idx = self.servers.index
            base = self.servers.urls[idx % n]
            try:
                if self.pool is not None:
                    r = await self.pool.request(method, base, path, hdrs, body, timeout)
                    return tr.decode_parts(method, base + path, r.status, r.headers, r.content)
                resp = await self.http.request(method, base + path, content=body, headers=hdrs, timeout=timeout)  # type: ignore[union-attr]
                return tr.decode(method, base + path, resp)
            except (ConnectFailed, *tr.CONNECT_ERRORS) as e:
                err = tr.transport_error(method, base + path, e)
                if n > 1:
                    log.warning("control plane %s unreachable, trying the next one", base)
                self.servers.failed(idx)
                continue
            except (Broken, OSError, asyncio.TimeoutError, httpx.TransportError) as e:
                raise tr.transport_error(method, base + path, e) from None
        assert err is not None
        raise err

    # -- registration ---------------------------------------------------------------
    def register_body(self) -> bytes:
        return tr.dumps(
            {
                "name": self.name,
                "queues": self.w.queues,
                "tags": self.w.tags,
                "capacity": self.w.concurrency + self.w.prefetch,
                "kind": "machine",
            }
        )

    async def register(self) -> _Registration:
        hdrs = {**tr.headers(self.token), "content-type": "application/json"}
        reply = await self.call("POST", "/v1/nodes", self.register_body(), headers=hdrs)
        hb = reply.get("heartbeat_interval_ms") or 5000
        reg = _Registration(reply["id"], reply["token"], max(0.1, hb / 1000))
        self.w.node_id = reg.id
        return reg

    async def register_first(self) -> Optional[_Registration]:
        started = self.loop.time()
        backoff = tr.Backoff(0.2, 5.0)
        limit = self.w.register_timeout
        while True:
            try:
                return await self._until_stop(self.register())
            except _Stopped:
                return None
            except (Unauthorized, Forbidden) as e:
                log.error("the control plane refused the token (%s %s): %s; check MUSTER_TOKEN / token=",
                          e.status, e.code, e.detail)
                raise
            except MusterError as e:
                if not e.transient or (limit is not None and self.loop.time() - started >= limit):
                    log.error("cannot register the node: %s", e)
                    raise
                delay = e.retry_after if e.retry_after is not None else backoff.next()
                log.warning("registration failed (%s), retrying in %.1fs", e, delay)
                try:
                    await self._until_stop(asyncio.sleep(delay))
                except _Stopped:
                    return None

    async def reregister(self, stale_id: str) -> None:
        """Registers again after ``stale_id`` was forgotten; concurrent callers that saw
        the same stale id register once."""
        async with self.reregister_lock:
            if self.reg is None or self.reg.id != stale_id:
                return
            log.warning("the control plane forgot node %s: registering again", stale_id)
            backoff = tr.Backoff(0.5, 10.0)
            while not self.w._stop_requested.is_set():  # type: ignore[union-attr]
                try:
                    reg = await self.register()
                except (Unauthorized, Forbidden, Invalid) as e:
                    log.error("re-registration refused (%s): stopping the worker", e)
                    self.fatal = e
                    self.w._request_stop(force=True)
                    return
                except MusterError as e:
                    delay = e.retry_after if e.retry_after is not None else backoff.next()
                    log.warning("re-registration failed (%s), retrying in %.1fs", e, delay)
                    await self._sleep_or_stop(delay)
                    continue
                log.info("registered again as node %s (was %s)", reg.id, stale_id)
                self.reg = reg
                if self.lease_fut is not None:
                    self.lease_fut.cancel()
                return

    async def _until_stop(self, aw: Awaitable[Any]) -> Any:
        """Awaits ``aw`` unless the stop is requested first (then raises _Stopped)."""
        stop = self.w._stop_requested
        assert stop is not None
        if stop.is_set():
            if inspect.iscoroutine(aw):
                aw.close()
            raise _Stopped()
        t = asyncio.ensure_future(aw)
        s = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({t, s}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            s.cancel()
        if t.done():
            return t.result()
        t.cancel()
        try:
            await t
        except (asyncio.CancelledError, Exception):
            pass
        raise _Stopped()

    async def _sleep_or_stop(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self.w._stop_requested.wait(), delay)  # type: ignore[union-attr]
        except asyncio.TimeoutError:
            pass

    # -- main -----------------------------------------------------------------------
    async def main(self) -> None:
        w = self.w
        w._run = self
        try:
            reg = await self.register_first()
            if reg is None:
                return
            self.reg = reg
            log.info("node %s registered (name %s, server %s, queues %s, concurrency %d)",
                     reg.id, self.name, self.servers.current, ",".join(w.queues), w.concurrency)
            await self.serve()
        finally:
            w._run = None
            if self.http is not None:
                await self.http.aclose()
            if self.pool is not None:
                await self.pool.aclose()
        if self.fatal is not None:
            raise self.fatal

    async def serve(self) -> None:
        w = self.w
        self.threads = _Threads(self, w.threads or w.concurrency)
        heartbeat = self.spawn(self.heartbeat_loop())
        reporter = self.spawn(self.report_loop())
        renewer = self.spawn(self.renew_loop())
        leaser = self.spawn(self.lease_loop())
        for t in (heartbeat, reporter, renewer, leaser):
            t.add_done_callback(self.loop_died)
        await w._stop_requested.wait()  # type: ignore[union-attr]

        # Drain: no more leases, then grace for what runs.
        self.leasing = False
        leaser.cancel()
        await asyncio.gather(leaser, return_exceptions=True)
        reg = self.reg
        assert reg is not None
        try:
            await self.call("POST", f"/v1/nodes/{reg.id}/drain", b"{}", timeout=5.0)
        except MusterError as e:
            log.debug("drain call failed: %s", e)
        if self.jobs:
            log.info("draining: %d running tasks, %.0fs grace", len(self.jobs), w.grace)
            self.idle.clear()
            waiter = asyncio.ensure_future(self.idle.wait())
            forced = asyncio.ensure_future(w._force.wait())  # type: ignore[union-attr]
            await asyncio.wait({waiter, forced}, timeout=w.grace, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            forced.cancel()
        if self.jobs:
            log.warning("grace over: handing back %d running tasks", len(self.jobs))
            for ctx in list(self.jobs.values()):
                self.stop_job(ctx, "shutdown")
            async_left = [c._atask for c in self.jobs.values() if c._atask is not None]
            if async_left:
                await asyncio.wait(async_left, timeout=5.0)
        self.threads.close()

        # Flush the reports, then leave.
        self.reports_closing = True
        self.report_wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(reporter), 30.0)
        except asyncio.TimeoutError:
            log.error("could not flush %d reports in time; dropping them", len(self.reports))
            reporter.cancel()
        heartbeat.cancel()
        renewer.cancel()
        await asyncio.gather(heartbeat, renewer, return_exceptions=True)
        reg = self.reg
        for attempt in range(3):
            try:
                await self.call("DELETE", f"/v1/nodes/{reg.id}", timeout=5.0)
                log.info("node %s deregistered", reg.id)
                break
            except (NotFound, Unauthorized):
                break
            except MusterError as e:
                if attempt == 2 or not e.transient:
                    log.warning("deregistration failed (%s); the server will time the node out", e)
                    break
                await asyncio.sleep(0.2 * (attempt + 1))
        for t in list(self.background):
            t.cancel()

    def loop_died(self, t: asyncio.Task) -> None:
        """A background loop must only end when told to: anything else is a bug, and a
        worker that silently stopped leasing would be worse than one that exits."""
        if t.cancelled() or (self.reports_closing and t.exception() is None):
            return
        e = t.exception()
        log.error("worker loop %s ended unexpectedly: %r; stopping", t.get_coro(), e)
        self.fatal = e or RuntimeError("a worker loop ended unexpectedly")
        self.w._request_stop(force=True)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        t = self.loop.create_task(coro)
        self.background.add(t)
        t.add_done_callback(self.background.discard)
        return t

    # -- lease loop ------------------------------------------------------------------
    async def lease_loop(self) -> None:
        w = self.w
        backoff = tr.Backoff(0.25, 5.0)
        wait_ms = int(max(0.0, min(w.lease_wait, tr.MAX_WAIT_MS / 1000)) * 1000)
        timeout = wait_ms / 1000 + LONG_POLL_SLACK
        while True:
            while self.free - self.reserved <= 0 or self.reporter_leases():
                self.slot_freed.clear()
                await self.slot_freed.wait()
            reg = self.reg
            assert reg is not None
            ask = min(self.free - self.reserved, 1000)
            body = b'{"max":%d,"wait_ms":%d}' % (ask, wait_ms)
            asked = self.loop.time()
            # The long-poll runs as its own future so that a re-registration can cut it
            # short (it would hold on to the forgotten node for up to lease_wait).
            fut = asyncio.ensure_future(self.call("POST", f"/v1/nodes/{reg.id}/lease", body, timeout=timeout))
            self.lease_fut = fut
            # Held while the call is out, so the report call cannot ask for them too.
            self.reserved += ask
            try:
                await asyncio.wait({fut})
            except asyncio.CancelledError:
                fut.cancel()
                raise
            finally:
                self.lease_fut = None
                self.reserved -= ask
            if fut.cancelled():
                continue
            try:
                reply = fut.result()
            except (NotFound, Unauthorized) as e:
                log.debug("lease: %s", e)
                await self.reregister(reg.id)
                continue
            except MusterError as e:
                delay = e.retry_after if e.retry_after is not None else backoff.next()
                log.warning("lease failed (%s), retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                continue
            leases = reply.get("leases") or ()
            self.w.stats["lease_calls"] += 1
            if not leases:
                # A server answering an empty long-poll at once (a draining node) must
                # not turn this loop into a busy one.
                if wait_ms and self.loop.time() - asked < wait_ms / 2000:
                    await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            for lease in leases:
                self.start(lease)

    def reporter_leases(self) -> bool:
        """True while the report call leases for the free slots (reports wait or are
        out, and the server takes lease_max)."""
        return self.lease_with_reports and bool(self.reports or self.reports_out)

    def start(self, lease: Dict[str, Any]) -> None:
        task = lease["task"]
        now = self.loop.time()
        ctx = Context(self, lease, task, now, (task.get("timeout_ms") or 30000) / 1000)
        task_id = ctx.task_id
        if not self.leasing:
            # Granted as the drain began: handed back at once.
            self.queue_report(_report_item(task_id, ctx._token, "failed", SHUTDOWN_ERROR, True))
            return
        if self.free - self.reserved <= 0 or task_id in self.jobs:
            log.warning("task %s: leased beyond capacity or twice; handing it back", task_id)
            self.queue_report(_report_item(task_id, ctx._token, "failed", "worker at capacity", True))
            return
        self.free -= 1
        self.w.stats["leased"] += 1
        self.jobs[task_id] = ctx
        if ctx._renew_at < self.renew_next:
            self.renew_next = ctx._renew_at
            self.renew_wake.set()
        max_run = task.get("max_run_ms")
        if max_run:
            ctx._kill_timer = self.loop.call_at(now + max_run / 1000, self.stop_job, ctx, "timeout")
        kind = task.get("kind")
        fn = self.w.handlers.get(kind)  # type: ignore[arg-type]
        if fn is None:
            known = ", ".join(sorted(self.w.handlers)) or "none"
            self.finish(ctx, _report_item(
                task_id, ctx._token, "failed",
                f"no handler for kind {kind!r} on worker {self.name} (handlers: {known})", True))
        elif self.w._async[kind]:  # type: ignore[index]
            coro = self.run_async(ctx, fn)
            if _PY312:
                ctx._atask = asyncio.Task(coro, loop=self.loop, eager_start=True)  # type: ignore[call-arg]
            else:
                ctx._atask = self.loop.create_task(coro)
        else:
            self.threads.submit(ctx, fn)  # type: ignore[union-attr]

    async def run_async(self, ctx: Context, fn: Handler) -> None:
        try:
            async with self.running:
                result = await fn(ctx._t.get("payload"), ctx)
        except asyncio.CancelledError:
            if ctx._reason is None:  # not our doing: the loop is going away
                self.finish(ctx, _report_item(ctx.task_id, ctx._token, "failed", SHUTDOWN_ERROR, True))
                raise
            self.finish(ctx, None)
            return
        except BaseException as e:  # noqa: BLE001 - every failure is reported
            self.finish(ctx, _failure_item(ctx.task_id, ctx._token, e))
            return
        self.finish(ctx, _success_item(ctx.task_id, ctx._token, result))

    def finish(self, ctx: Context, out: Optional[bytes]) -> None:
        """The handler is over: queue its outcome (unless one was already given) and
        free its slot."""
        if ctx._finished:
            return
        ctx._finished = True
        if self.jobs.get(ctx.task_id) is ctx:
            del self.jobs[ctx.task_id]
        if ctx._kill_timer is not None:
            ctx._kill_timer.cancel()
        if not ctx._reported and out is not None:
            ctx._reported = True
            self.queue_report(out)
            # The outcome key comes right after the (bounded) id and token.
            self.w.stats["succeeded" if b'"outcome":"succeeded"' in out[:600] else "failed"] += 1
        self.free += 1
        self.slot_freed.set()
        if not self.jobs:
            self.idle.set()

    def stop_job(self, ctx: Context, reason: str) -> None:
        """Stops a running task: cancelled (report failed, not retryable), lease lost
        (report nothing), timeout (failed, retryable) or shutdown (failed, retryable).
        The slot stays taken until the handler really returns."""
        if ctx._finished or ctx._reported or ctx._reason is not None:
            return
        log.info("task %s: stopping (%s)", ctx.task_id, reason)
        ctx._stop(reason)
        ctx._reported = True
        if reason == "cancelled":
            self.queue_report(_report_item(ctx.task_id, ctx._token, "failed", CANCELLED_ERROR, False))
        elif reason == "timeout":
            self.queue_report(_report_item(ctx.task_id, ctx._token, "failed", "ran past max_run_ms", True))
        elif reason == "shutdown":
            self.queue_report(_report_item(ctx.task_id, ctx._token, "failed", SHUTDOWN_ERROR, True))
        if ctx._atask is not None:
            ctx._atask.cancel()

    # -- renewals and progress -------------------------------------------------------
    async def renew_loop(self) -> None:
        """One loop renews every lease: it wakes at the earliest renewal due (a third
        of the TTL after the last one), so a short task costs no timer of its own."""
        loop = self.loop
        inf = float("inf")
        while True:
            now = loop.time()
            nxt = inf
            due: List[Context] = []
            for ctx in self.jobs.values():
                if ctx._reported or ctx._extending:
                    continue  # an extend in flight reschedules when it ends
                if ctx._renew_at <= now:
                    ctx._extending = True
                    if ctx._progress_dirty or len(due) >= MAX_EXTEND_BATCH:
                        # Progress goes on its own (a refused value fails that call only).
                        self.spawn(self.extend(ctx))
                    else:
                        due.append(ctx)
                elif ctx._renew_at < nxt:
                    nxt = ctx._renew_at
            if due:
                # The leases due, renewed together: one POST /v1/nodes/{id}/extend.
                self.spawn(self.extend_many(due))
            self.renew_next = nxt
            self.renew_wake.clear()
            try:
                await asyncio.wait_for(self.renew_wake.wait(), None if nxt == inf else max(0.0, nxt - loop.time()))
            except asyncio.TimeoutError:
                pass

    def schedule_renew(self, ctx: Context, when: float) -> None:
        ctx._renew_at = when
        if when < self.renew_next:
            self.renew_next = when
            self.renew_wake.set()

    async def extend(self, ctx: Context) -> None:
        body: Dict[str, Any] = {"lease_token": ctx._token}
        sent_progress = ctx._progress_dirty
        if sent_progress:
            body["progress"] = ctx._progress
            ctx._progress_dirty = False
        sent = self.loop.time()
        ctx._last_extend = sent
        try:
            reply = await self.call("POST", f"/v1/tasks/{ctx.task_id}/extend", tr.dumps(body))
        except (NotFound, Conflict, Unauthorized, Forbidden) as e:
            ctx._extending = False
            log.warning("task %s: lease lost (%s)", ctx.task_id, e)
            self.stop_job(ctx, "lease_lost")
            return
        except MusterError as e:
            ctx._extending = False
            if sent_progress and not ctx._progress_dirty:
                ctx._progress_dirty = True
            now = self.loop.time()
            if now >= ctx._deadline:
                log.warning("task %s: lease expired without a renewal (%s)", ctx.task_id, e)
                self.stop_job(ctx, "lease_lost")
                return
            # Retry soon, well inside what is left of the lease.
            nxt = min(0.2, (ctx._deadline - now) / 4)
            log.warning("task %s: renewal failed (%s), retrying in %.2fs", ctx.task_id, e, nxt)
            self.schedule_renew(ctx, now + nxt)
            return
        ctx._extending = False
        ctx._deadline = sent + ctx._ttl
        if reply and reply.get("cancel_requested"):
            self.stop_job(ctx, "cancelled")
            return
        nxt = sent + ctx._ttl / 3
        if ctx._progress_dirty:
            nxt = min(nxt, self.loop.time() + PROGRESS_MIN_GAP)
        self.schedule_renew(ctx, nxt)

    async def extend_many(self, ctxs: List[Context]) -> None:
        """Renews many leases in one call; each refused lease stops its task, a cancel
        requested stops its task."""
        reg = self.reg
        assert reg is not None
        sent = self.loop.time()
        items = []
        for ctx in ctxs:
            ctx._last_extend = sent
            items.append({"task_id": ctx.task_id, "lease_token": ctx._token})
        try:
            reply = await self.call("POST", f"/v1/nodes/{reg.id}/extend", tr.dumps({"leases": items}))
        except (NotFound, Unauthorized, Forbidden) as e:
            # The node is unknown to the server (its Redis restarted empty): so are its
            # leases; results sent for them would be refused.
            for ctx in ctxs:
                ctx._extending = False
                self.stop_job(ctx, "lease_lost")
            log.warning("lease renewal refused for %d leases (%s)", len(ctxs), e)
            return
        except MusterError as e:
            now = self.loop.time()
            for ctx in ctxs:
                ctx._extending = False
                if now >= ctx._deadline:
                    log.warning("task %s: lease expired without a renewal (%s)", ctx.task_id, e)
                    self.stop_job(ctx, "lease_lost")
                else:
                    # Retry soon, well inside what is left of the lease.
                    self.schedule_renew(ctx, now + min(0.2, (ctx._deadline - now) / 4))
            log.warning("renewal of %d leases failed (%s), retrying", len(ctxs), e)
            return
        results = (reply or {}).get("results") or []
        now = self.loop.time()
        for i, ctx in enumerate(ctxs):
            ctx._extending = False
            r = results[i] if i < len(results) else None
            if r is None or r.get("task_id") != ctx.task_id:
                self.schedule_renew(ctx, now + 0.2)  # not answered: the next round
                continue
            if r.get("status") != "extended":
                log.warning("task %s: lease lost (%s)", ctx.task_id, r.get("code") or r.get("status"))
                self.stop_job(ctx, "lease_lost")
                continue
            ctx._deadline = sent + ctx._ttl
            if r.get("cancel_requested"):
                self.stop_job(ctx, "cancelled")
                continue
            nxt = sent + ctx._ttl / 3
            if ctx._progress_dirty:
                nxt = min(nxt, now + PROGRESS_MIN_GAP)
            self.schedule_renew(ctx, nxt)

    def progress(self, ctx: Context, data: Any) -> None:
        if ctx._finished or ctx._reported:
            return
        ctx._progress = data
        ctx._progress_dirty = True
        if not ctx._extending:
            self.schedule_renew(ctx, min(ctx._renew_at, max(self.loop.time(), ctx._last_extend + PROGRESS_MIN_GAP)))

    # -- reports ---------------------------------------------------------------------
    def queue_report(self, item: bytes) -> None:
        self.reports.append(item)
        self.report_wake.set()

    async def report_loop(self) -> None:
        backoff = tr.Backoff(0.1, 5.0)
        failing_since: Optional[float] = None
        while True:
            if not self.reports:
                if self.reports_closing:
                    return
                self.report_wake.clear()
                await self.report_wake.wait()
                continue
            n, size = 0, 0
            for item in self.reports:
                if n == MAX_REPORT_BATCH or (n and size + len(item) > MAX_REPORT_BYTES):
                    break
                n += 1
                size += len(item) + 1
            batch = self.reports[:n]
            del self.reports[:n]
            reg = self.reg
            assert reg is not None
            # The free slots (those these outcomes freed among them) are filled by the
            # same call; held until its answer.
            ask = 0
            if self.lease_with_reports and self.leasing:
                ask = max(0, min(self.free - self.reserved, 1000))
            if ask:
                body = b'{"reports":[' + b",".join(batch) + b'],"lease_max":%d}' % ask
            else:
                body = b'{"reports":[' + b",".join(batch) + b"]}"
            self.reserved += ask
            self.reports_out = len(batch)
            try:
                reply = await self.call("POST", f"/v1/nodes/{reg.id}/reports", body)
            except MusterError as e:
                self.reserved -= ask
                self.reports_out = 0
                self.slot_freed.set()
                if ask and e.code == "invalid_body":
                    # A server older than lease_max refuses the field: the long-poll
                    # alone leases from now on, and the same reports go again without it.
                    log.info("the server does not lease with reports; the long-poll alone leases")
                    self.lease_with_reports = False
                    self.reports[:0] = batch
                    continue
                if e.transient:
                    now = self.loop.time()
                    if failing_since is None:
                        failing_since = now
                    if now - failing_since < REPORT_RETRY_FOR:
                        self.reports[:0] = batch
                        delay = e.retry_after if e.retry_after is not None else backoff.next()
                        log.warning("report flush of %d failed (%s), retrying in %.1fs", len(batch), e, delay)
                        await asyncio.sleep(delay)
                        continue
                    log.error("reports undeliverable for %.0fs; dropping %d", REPORT_RETRY_FOR, len(batch))
                else:
                    # The node was forgotten (its leases with it) or the batch is refused
                    # as a whole: retrying cannot help.
                    log.warning("reports refused (%s); dropping %d", e, len(batch))
                    if isinstance(e, (NotFound, Unauthorized)):
                        self.spawn(self.reregister(reg.id))
                failing_since = None
                backoff.reset()
                continue
            self.reserved -= ask
            self.reports_out = 0
            for lease in (reply or {}).get("leases") or ():
                self.start(lease)
            self.slot_freed.set()
            failing_since = None
            backoff.reset()
            self.w.stats["report_calls"] += 1
            for i, r in enumerate((reply or {}).get("results", ())):
                st = r.get("status", 200)
                if st < 300:
                    continue
                if st in (404, 409):  # the lease is gone: someone else finishes the task
                    log.debug("report for %s refused: %s %s", r.get("task_id"), st, r.get("code"))
                    continue
                log.warning("report for %s refused: %s %s", r.get("task_id"), st, r.get("code"))
                if st in (413, 422) and i < len(batch):
                    # A result the server will not store: fail the task for good rather
                    # than leave it to its lease's expiry and the same refusal again.
                    item = tr.loads(batch[i])
                    if item.get("outcome") == "succeeded":
                        self.queue_report(_report_item(
                            item["task_id"], item["lease_token"], "failed",
                            f"the server refused the result ({st} {r.get('code')})", False))

    # -- heartbeats ------------------------------------------------------------------
    async def heartbeat_loop(self) -> None:
        last_status = "active"
        while True:
            reg = self.reg
            assert reg is not None
            await asyncio.sleep(reg.heartbeat)
            try:
                reply = await self.call("POST", f"/v1/nodes/{reg.id}/heartbeat", b"{}")
            except (NotFound, Unauthorized):
                await self.reregister(reg.id)
                last_status = "active"
                continue
            except MusterError as e:
                log.warning("heartbeat failed: %s", e)
                continue
            status = reply.get("status")
            if status and status != last_status:
                log.info("node %s is %s", reg.id, status)
                last_status = status
            for task_id in reply.get("cancel") or ():
                ctx = self.jobs.get(task_id)
                if ctx is not None:
                    self.stop_job(ctx, "cancelled")


class _Stopped(Exception):
    pass

"""The client: submit, read, wait for, list, cancel and retry tasks over the HTTP API.

:class:`Client` is blocking (one ``httpx.Client`` with keep-alive, safe to share between
threads); :class:`AsyncClient` has the same methods as coroutines. Both take one or
more server URLs and move on to the next one when a server cannot be reached.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import time
from typing import Any, AsyncIterator, Dict, Iterable, Iterator, List, Mapping, Optional, Union
from urllib.parse import quote

import httpx

from . import _transport as tr
from .errors import MusterError, TransportError

__all__ = ["Client", "AsyncClient", "Task", "TaskPage", "TERMINAL_STATES"]

#: States a task never leaves on its own.
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

#: Most tasks one ``POST /v1/tasks/batch`` takes (all validated, stored all or nothing).
MAX_BATCH = 10_000

# Documented fields of the task JSON: reading one that the server left out gives None.
_TASK_FIELDS = frozenset(
    """id queue kind payload priority state attempts max_attempts timeout_ms requires fence
    created_at batch cancel_requested concurrency_key concurrency_limit depends_on error
    finished_at lease_expires_at max_run_ms node on_dependency_failure origin progress result
    result_schema run_at started_at unique_key""".split()
)


class Task:
    """A task as the API shows it. Every field of the task JSON is an attribute
    (``.id .state .result .error .attempts .progress ...``); ``.raw`` is the dict."""

    __slots__ = ("raw",)

    def __init__(self, raw: Dict[str, Any]) -> None:
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        raw = self.raw
        if name in raw:
            return raw[name]
        if name in _TASK_FIELDS:
            return None
        raise AttributeError(f"task has no field {name!r}")

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def done(self) -> bool:
        """True once the task is terminal (succeeded, failed or cancelled)."""
        return self.raw.get("state") in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.raw.get("state") == "succeeded"

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.raw == self.raw

    def __repr__(self) -> str:
        r = self.raw
        return f"Task(id={r.get('id')!r}, kind={r.get('kind')!r}, state={r.get('state')!r}, attempts={r.get('attempts')!r})"


class TaskPage:
    """One page of ``GET /v1/tasks``: ``items`` and the ``next_cursor`` (None at the end).

    A page can be short, even empty, and still have a cursor: each call reads a bounded
    part of the index."""

    __slots__ = ("items", "next_cursor")

    def __init__(self, items: List[Task], next_cursor: Optional[str]) -> None:
        self.items = items
        self.next_cursor = next_cursor

    def __iter__(self) -> Iterator[Task]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"TaskPage({len(self.items)} tasks, next_cursor={self.next_cursor!r})"


def _task_id(t: Union[str, Task]) -> str:
    return t.id if isinstance(t, Task) else t


def _rfc3339(v: Any) -> Any:
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            raise ValueError("run_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
        return v.isoformat()
    return v


def task_body(
    kind: str,
    payload: Any = None,
    *,
    queue: Optional[str] = None,
    priority: Optional[int] = None,
    max_attempts: Optional[int] = None,
    delay: Optional[float] = None,
    **fields: Any,
) -> Dict[str, Any]:
    """The JSON of one new task (``POST /v1/tasks`` body / one item of a batch).

    ``delay`` is seconds (sent as ``delay_ms``); ``run_at`` may be an aware datetime;
    ``depends_on`` may hold :class:`Task` objects; other fields pass through unchanged.
    """
    body: Dict[str, Any] = {"kind": kind}
    if payload is not None:
        body["payload"] = payload
    if queue is not None:
        body["queue"] = queue
    if priority is not None:
        body["priority"] = priority
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    if delay is not None:
        body["delay_ms"] = int(round(delay * 1000))
    for k, v in fields.items():
        if v is None:
            continue
        if k == "run_at":
            v = _rfc3339(v)
        elif k == "depends_on":
            v = [_task_id(t) for t in v]
        body[k] = v
    return body


def _batch_items(tasks: Iterable[Mapping[str, Any]], queue: Optional[str]) -> List[Dict[str, Any]]:
    items = []
    for t in tasks:
        if isinstance(t, Task):
            raise TypeError("submit_many takes dicts of new tasks ({'kind': ..., 'payload': ...}), not Task objects")
        d = dict(t)
        if "kind" not in d:
            raise ValueError("every task needs a 'kind'")
        kind = d.pop("kind")
        if queue is not None:
            d.setdefault("queue", queue)
        items.append(task_body(kind, **d))
    return items


def _chunks(items: List[Any], n: int) -> Iterator[List[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _tid(task_id: Union[str, Task]) -> str:
    return quote(_task_id(task_id), safe="")


def _list_params(queue, state, kind, limit, cursor) -> Dict[str, Any]:
    p = {"queue": queue, "state": state, "kind": kind, "limit": limit, "cursor": cursor}
    return {k: v for k, v in p.items() if v is not None}


def _page(data: Dict[str, Any]) -> TaskPage:
    return TaskPage([Task(t) for t in data.get("items", [])], data.get("next_cursor"))


class _Base:
    def __init__(self, server: tr.ServerSpec, token: Optional[str], timeout: float, retries: int) -> None:
        self._servers = tr.Servers(tr.parse_servers(server))
        self.token = tr.resolve_token(token)
        self.timeout = timeout
        self.retries = retries
        self._headers = tr.headers(self.token)

    @property
    def servers(self) -> List[str]:
        """The control-plane URLs, tried in turn."""
        return list(self._servers.urls)

    @property
    def server(self) -> str:
        """The URL calls go to now."""
        return self._servers.current

    def _should_retry(self, e: MusterError, safe: bool, attempt: int) -> bool:
        connect_failed = isinstance(e, TransportError) and e.code == "connect"
        return attempt < self.retries and e.transient and (safe or connect_failed)

    @staticmethod
    def _delay(e: MusterError, backoff: tr.Backoff) -> float:
        return min(e.retry_after, 5.0) if e.retry_after is not None else backoff.next()


class Client(_Base):
    """Blocking client of the muster API.

    ``Client()`` reads ``MUSTER_SERVER`` (one URL or several, comma-separated) and
    ``MUSTER_TOKEN``; ``Client(url, token=...)`` names them. ``retries`` is how often a
    safe call (reads, waits, and writes that carry an idempotency key) is tried again
    after a transient error (no answer, 429, 503); a call whose connection could not be
    opened is always safe to repeat.

    Raises subclasses of :class:`muster.MusterError` (``NotFound``, ``Conflict``,
    ``Unauthorized``...), each with the server's ``status``, ``code`` and ``detail``.
    """

    def __init__(
        self,
        server: tr.ServerSpec = None,
        token: Optional[str] = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        http: Optional[httpx.Client] = None,
    ) -> None:
        super().__init__(server, token, timeout, retries)
        self._http = http or httpx.Client(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=32))

    # -- plumbing -----------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        safe: Optional[bool] = None,
    ) -> Any:
        """One API call (``path`` like ``/v1/queues``); the decoded JSON answer.

        Any route of the API can be called this way; the named methods cover tasks."""
        if safe is None:
            safe = method in ("GET", "HEAD") or bool(headers and "Idempotency-Key" in headers)
        backoff = tr.Backoff(0.2, 2.0)
        attempt = 0
        while True:
            try:
                return self._once(method, path, json, params, headers, timeout)
            except MusterError as e:
                if not self._should_retry(e, safe, attempt):
                    raise
                attempt += 1
                time.sleep(self._delay(e, backoff))

    def _once(self, method, path, json, params, headers, timeout) -> Any:
        hdrs = self._headers if not headers else {**self._headers, **headers}
        content = tr.dumps(json) if json is not None else None
        if content is not None:
            hdrs = {**hdrs, "content-type": "application/json"}
        n = len(self._servers.urls)
        err: Optional[TransportError] = None
        for _ in range(n):
            idx = self._servers.index
            url = self._servers.urls[idx % n] + path
            try:
                r = self._http.request(method, url, content=content, params=params, headers=hdrs,
                                       timeout=timeout if timeout is not None else self.timeout)
            except tr.CONNECT_ERRORS as e:
                err = tr.transport_error(method, url, e)
                err.code = "connect"
                self._servers.failed(idx)
                continue
            except httpx.TransportError as e:
                raise tr.transport_error(method, url, e) from None
            return tr.decode(method, url, r)
        assert err is not None
        raise err

    # -- tasks --------------------------------------------------------------------
    def submit(
        self,
        kind: str,
        payload: Any = None,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        max_attempts: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        **fields: Any,
    ) -> Task:
        """Submits one task (``POST /v1/tasks``) and returns it as stored.

        ``fields`` are the other fields of a new task: ``run_at`` (aware datetime or
        RFC 3339), ``delay`` (seconds) or ``delay_ms``, ``timeout_ms`` (lease TTL),
        ``backoff`` ``{"initial_ms", "max_ms"}``, ``requires``, ``depends_on``,
        ``unique_key``, ``concurrency_key``/``concurrency_limit``, ``retention_ms``,
        ``max_run_ms``... With ``idempotency_key`` a repeat (same token, same body)
        creates nothing and answers the first task (and the call is retried on transient
        errors); the key reused with another body or token raises ``Invalid``
        (``idempotency_key_reused``)."""
        body = task_body(kind, payload, queue=queue, priority=priority, max_attempts=max_attempts, **fields)
        h = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return Task(self.request("POST", "/v1/tasks", json=body, headers=h))

    def submit_many(
        self,
        tasks: Iterable[Mapping[str, Any]],
        *,
        queue: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> List[str]:
        """Submits many tasks (``POST /v1/tasks/batch``); their ids in order.

        Each item is a dict like ``{"kind": "add", "payload": {...}, "priority": 5}``;
        ``queue`` is the default for items without one. Up to 10,000 tasks are stored
        all or nothing; more are sent 10,000 at a time (each call all or nothing)."""
        items = _batch_items(tasks, queue)
        ids: List[str] = []
        for n, chunk in enumerate(_chunks(items, MAX_BATCH)):
            h = {"Idempotency-Key": f"{idempotency_key}:{n}" if n else idempotency_key} if idempotency_key else None
            ids.extend(self.request("POST", "/v1/tasks/batch", json={"tasks": chunk}, headers=h)["ids"])
        return ids

    def get(self, task_id: Union[str, Task]) -> Task:
        """The task (``GET /v1/tasks/{id}``); :class:`NotFound` when it does not exist."""
        return Task(self.request("GET", f"/v1/tasks/{_tid(task_id)}"))

    def wait(self, task_id: Union[str, Task], timeout: Optional[float] = 30.0) -> Task:
        """Waits until the task is terminal, at most ``timeout`` seconds (None: no
        limit), and returns it; after a timeout it is returned as it stands (check
        ``.done`` or ``.state``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        path = f"/v1/tasks/{_tid(task_id)}/wait"
        while True:
            left_ms = tr.MAX_WAIT_MS if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            wait_ms = min(left_ms, tr.MAX_WAIT_MS)
            t = Task(self.request("GET", path, params={"timeout_ms": wait_ms}, timeout=wait_ms / 1000 + 15))
            if t.done or (deadline is not None and time.monotonic() >= deadline):
                return t

    def list(
        self,
        *,
        queue: Optional[str] = None,
        state: Optional[str] = None,
        kind: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> TaskPage:
        """One page of tasks (``GET /v1/tasks``), newest first within an index."""
        return _page(self.request("GET", "/v1/tasks", params=_list_params(queue, state, kind, limit, cursor)))

    def iter_tasks(
        self, *, queue: Optional[str] = None, state: Optional[str] = None, kind: Optional[str] = None, page_size: int = 500
    ) -> Iterator[Task]:
        """Every matching task, following cursors page after page."""
        cursor = None
        while True:
            page = self.list(queue=queue, state=state, kind=kind, limit=page_size, cursor=cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def cancel(self, task_id: Union[str, Task]) -> Task:
        """Cancels a task (``POST /v1/tasks/{id}/cancel``). A running one answers with
        ``cancel_requested`` until its worker stops it; :class:`Conflict` when it
        already succeeded or failed."""
        return Task(self.request("POST", f"/v1/tasks/{_tid(task_id)}/cancel"))

    def retry(self, task_id: Union[str, Task]) -> Task:
        """Puts a failed or cancelled task back to pending with its attempts reset."""
        return Task(self.request("POST", f"/v1/tasks/{_tid(task_id)}/retry"))

    def delete(self, task_id: Union[str, Task]) -> None:
        """Deletes a terminal task; :class:`Conflict` while it is not terminal."""
        self.request("DELETE", f"/v1/tasks/{_tid(task_id)}")

    # -- batches and schedules ----------------------------------------------------
    def create_batch(
        self,
        tasks: Iterable[Mapping[str, Any]],
        *,
        then: Optional[Mapping[str, Any]] = None,
        queue: Optional[str] = None,
        open: bool = False,
    ) -> Dict[str, Any]:
        """Creates a batch (``POST /v1/batches``): ``then`` (a new-task dict) is
        submitted exactly once when every child is terminal. Returns the batch JSON."""
        body: Dict[str, Any] = {"tasks": _batch_items(tasks, queue)}
        if then is not None:
            body["then"] = _batch_items([then], queue)[0]
        if open:
            body["open"] = True
        return self.request("POST", "/v1/batches", json=body)

    def get_batch(self, batch_id: str) -> Dict[str, Any]:
        """A batch and its progress (``GET /v1/batches/{id}``)."""
        return self.request("GET", f"/v1/batches/{quote(batch_id, safe='')}")

    def create_schedule(self, name: str, cron: str, task: Mapping[str, Any], **fields: Any) -> Dict[str, Any]:
        """Creates a cron schedule (``POST /v1/schedules``); ``cron`` has a seconds
        field (``"0 */5 * * * *"``), ``fields`` are ``timezone``, ``overlap``,
        ``catch_up``."""
        body = {"name": name, "cron": cron, "task": _batch_items([task], None)[0]}
        body.update({k: v for k, v in fields.items() if v is not None})
        return self.request("POST", "/v1/schedules", json=body)

    def delete_schedule(self, name: str) -> None:
        self.request("DELETE", f"/v1/schedules/{quote(name, safe='')}")


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: the same methods, as coroutines."""

    def __init__(
        self,
        server: tr.ServerSpec = None,
        token: Optional[str] = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        http: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(server, token, timeout, retries)
        self._http = http or httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=32))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        safe: Optional[bool] = None,
    ) -> Any:
        """One API call; see :meth:`Client.request`."""
        if safe is None:
            safe = method in ("GET", "HEAD") or bool(headers and "Idempotency-Key" in headers)
        backoff = tr.Backoff(0.2, 2.0)
        attempt = 0
        while True:
            try:
                return await self._once(method, path, json, params, headers, timeout)
            except MusterError as e:
                if not self._should_retry(e, safe, attempt):
                    raise
                attempt += 1
                await asyncio.sleep(self._delay(e, backoff))

    async def _once(self, method, path, json, params, headers, timeout) -> Any:
        hdrs = self._headers if not headers else {**self._headers, **headers}
        content = tr.dumps(json) if json is not None else None
        if content is not None:
            hdrs = {**hdrs, "content-type": "application/json"}
        n = len(self._servers.urls)
        err: Optional[TransportError] = None
        for _ in range(n):
            idx = self._servers.index
            url = self._servers.urls[idx % n] + path
            try:
                r = await self._http.request(method, url, content=content, params=params, headers=hdrs,
                                             timeout=timeout if timeout is not None else self.timeout)
            except tr.CONNECT_ERRORS as e:
                err = tr.transport_error(method, url, e)
                err.code = "connect"
                self._servers.failed(idx)
                continue
            except httpx.TransportError as e:
                raise tr.transport_error(method, url, e) from None
            return tr.decode(method, url, r)
        assert err is not None
        raise err

    async def submit(
        self,
        kind: str,
        payload: Any = None,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        max_attempts: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        **fields: Any,
    ) -> Task:
        """See :meth:`Client.submit`."""
        body = task_body(kind, payload, queue=queue, priority=priority, max_attempts=max_attempts, **fields)
        h = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return Task(await self.request("POST", "/v1/tasks", json=body, headers=h))

    async def submit_many(
        self, tasks: Iterable[Mapping[str, Any]], *, queue: Optional[str] = None, idempotency_key: Optional[str] = None
    ) -> List[str]:
        """See :meth:`Client.submit_many`."""
        items = _batch_items(tasks, queue)
        ids: List[str] = []
        for n, chunk in enumerate(_chunks(items, MAX_BATCH)):
            h = {"Idempotency-Key": f"{idempotency_key}:{n}" if n else idempotency_key} if idempotency_key else None
            ids.extend((await self.request("POST", "/v1/tasks/batch", json={"tasks": chunk}, headers=h))["ids"])
        return ids

    async def get(self, task_id: Union[str, Task]) -> Task:
        return Task(await self.request("GET", f"/v1/tasks/{_tid(task_id)}"))

    async def wait(self, task_id: Union[str, Task], timeout: Optional[float] = 30.0) -> Task:
        """See :meth:`Client.wait`."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        path = f"/v1/tasks/{_tid(task_id)}/wait"
        while True:
            left_ms = tr.MAX_WAIT_MS if deadline is None else max(0, int((deadline - loop.time()) * 1000))
            wait_ms = min(left_ms, tr.MAX_WAIT_MS)
            t = Task(await self.request("GET", path, params={"timeout_ms": wait_ms}, timeout=wait_ms / 1000 + 15))
            if t.done or (deadline is not None and loop.time() >= deadline):
                return t

    async def list(
        self,
        *,
        queue: Optional[str] = None,
        state: Optional[str] = None,
        kind: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> TaskPage:
        return _page(await self.request("GET", "/v1/tasks", params=_list_params(queue, state, kind, limit, cursor)))

    async def iter_tasks(
        self, *, queue: Optional[str] = None, state: Optional[str] = None, kind: Optional[str] = None, page_size: int = 500
    ) -> AsyncIterator[Task]:
        cursor = None
        while True:
            page = await self.list(queue=queue, state=state, kind=kind, limit=page_size, cursor=cursor)
            for t in page.items:
                yield t
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def cancel(self, task_id: Union[str, Task]) -> Task:
        return Task(await self.request("POST", f"/v1/tasks/{_tid(task_id)}/cancel"))

    async def retry(self, task_id: Union[str, Task]) -> Task:
        return Task(await self.request("POST", f"/v1/tasks/{_tid(task_id)}/retry"))

    async def delete(self, task_id: Union[str, Task]) -> None:
        await self.request("DELETE", f"/v1/tasks/{_tid(task_id)}")

    async def create_batch(
        self,
        tasks: Iterable[Mapping[str, Any]],
        *,
        then: Optional[Mapping[str, Any]] = None,
        queue: Optional[str] = None,
        open: bool = False,
    ) -> Dict[str, Any]:
        body: Dict[str, Any] = {"tasks": _batch_items(tasks, queue)}
        if then is not None:
            body["then"] = _batch_items([then], queue)[0]
        if open:
            body["open"] = True
        return await self.request("POST", "/v1/batches", json=body)

    async def get_batch(self, batch_id: str) -> Dict[str, Any]:
        return await self.request("GET", f"/v1/batches/{quote(batch_id, safe='')}")

    async def create_schedule(self, name: str, cron: str, task: Mapping[str, Any], **fields: Any) -> Dict[str, Any]:
        body = {"name": name, "cron": cron, "task": _batch_items([task], None)[0]}
        body.update({k: v for k, v in fields.items() if v is not None})
        return await self.request("POST", "/v1/schedules", json=body)

    async def delete_schedule(self, name: str) -> None:
        await self.request("DELETE", f"/v1/schedules/{quote(name, safe='')}")

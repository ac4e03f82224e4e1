"""What the sync client, the async client and the worker share: the list of server
URLs with fail-over, auth headers, JSON encoding and decoding of answers into typed
errors. No I/O happens here; callers own their ``httpx`` clients.
"""

from __future__ import annotations

import json
import os
import random
import threading
from typing import Any, Iterable, List, Optional, Sequence, Union

import httpx

from .errors import MusterError, TransportError, error_from_response

try:  # an optional speed-up: used when installed, never required
    import orjson as _orjson  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

DEFAULT_SERVER = "http://127.0.0.1:8080"

#: Longest single long-poll the server holds (its ``--max-wait-ms`` cap is 60 s).
MAX_WAIT_MS = 60_000

ServerSpec = Union[str, Sequence[str], None]


# One encoder: json.dumps with arguments builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> bytes:
    """JSON-encodes ``value`` compactly (orjson when it is installed)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(value)
        except TypeError:  # e.g. non-str keys, which the stdlib turns into strings
            pass
    return _ENCODER.encode(value).encode()


def loads(data: Union[bytes, str]) -> Any:
    """Decodes JSON (orjson when it is installed)."""
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)


def parse_servers(server: ServerSpec) -> List[str]:
    """Normalises one URL, a comma-separated list or a sequence of URLs.

    ``None`` reads ``MUSTER_SERVER`` (comma-separated for several), else the local
    default. A URL without a scheme gets ``http://``.
    """
    if server is None:
        server = os.environ.get("MUSTER_SERVER") or DEFAULT_SERVER
    items: Iterable[str] = server.split(",") if isinstance(server, str) else server
    out = []
    for s in items:
        s = s.strip().rstrip("/")
        if not s:
            continue
        if "://" not in s:
            s = "http://" + s
        out.append(s)
    if not out:
        raise ValueError("no muster server URL given (MUSTER_SERVER or server=...)")
    return out


def resolve_token(token: Optional[str]) -> Optional[str]:
    """``token`` or ``MUSTER_TOKEN``; empty means none."""
    if token is None:
        token = os.environ.get("MUSTER_TOKEN")
    return token or None


def headers(token: Optional[str]) -> dict:
    h = {"accept": "application/json", "user-agent": "muster-sdk-python/0.1"}
    if token:
        h["authorization"] = f"Bearer {token}"
    return h


class Servers:
    """The control-plane URLs and the one calls go to now.

    A connection error moves on to the next URL; a concurrent caller that already
    moved on is not undone (compare and swap under a lock).
    """

    def __init__(self, urls: List[str]) -> None:
        self.urls = urls
        self._i = 0
        self._lock = threading.Lock()

    @property
    def index(self) -> int:
        return self._i

    @property
    def current(self) -> str:
        return self.urls[self._i % len(self.urls)]

    def failed(self, index: int) -> None:
        with self._lock:
            if self._i == index:
                self._i = (index + 1) % len(self.urls)


#: httpx errors that mean the request never reached a server: safe to send elsewhere.
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


def transport_error(method: str, url: str, exc: BaseException) -> TransportError:
    msg = str(exc) or type(exc).__name__
    return TransportError(f"no answer: {msg}", method=method, url=url)


def decode(method: str, url: str, response: httpx.Response) -> Any:
    """The JSON of a 2xx answer (``None`` for an empty body); a typed error otherwise."""
    return decode_parts(method, url, response.status_code, response.headers, response.content)


def decode_parts(method: str, url: str, status: int, headers: Any, body: bytes) -> Any:
    """:func:`decode` from the status, headers (``.get`` by lower-case name) and body."""
    if 200 <= status < 300:
        if not body or status == 204:
            return None
        try:
            return loads(body)
        except ValueError as e:
            raise MusterError(f"unexpected answer (not JSON): {e}", status=status, code="decode",
                              method=method, url=url) from None
    raise error_from_response(method, url, status, headers, body)


class Backoff:
    """Exponential backoff with jitter: each delay is between half and all of a step
    that doubles up to ``maximum``."""

    def __init__(self, minimum: float = 0.2, maximum: float = 10.0) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self._cur = minimum

    def reset(self) -> None:
        self._cur = self.minimum

    def next(self) -> float:
        d = self._cur * random.uniform(0.5, 1.0)
        self._cur = min(self._cur * 2, self.maximum)
        return d

"""A small HTTP/1.1 client on asyncio streams, for the worker's hot path.

Why not httpx here: a request through ``httpx.AsyncClient`` costs several hundred
microseconds of CPU, and a worker makes two per batch of tasks (lease, reports); on a
no-op workload that was about half the worker's CPU. This client does only what the
agent protocol needs: keep-alive connections per server, ``Content-Length`` and chunked
bodies, TLS through ``ssl``, one timeout per request. Everything else (proxies, HTTP/2,
redirects) is what ``Worker(http="httpx")`` is for.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

__all__ = ["Pool", "ConnectFailed", "Broken"]

_PY311 = sys.version_info >= (3, 11)
_MAX_HEADER = 64 * 1024


class ConnectFailed(OSError):
    """The connection could not be opened: nothing was sent (safe to send elsewhere)."""


class Broken(OSError):
    """The connection failed after the request was (maybe) sent, or the answer was not
    HTTP."""


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - closing a dead socket
            pass


class _Origin:
    __slots__ = ("host", "port", "ssl", "host_header", "idle")

    def __init__(self, base: str) -> None:
        u = urlsplit(base)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {base!r}")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl: Optional[ssl.SSLContext] = ssl.create_default_context() if u.scheme == "https" else None
        default = (u.scheme == "https" and self.port == 443) or (u.scheme == "http" and self.port == 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default else f"{host}:{self.port}"
        self.idle: List[_Conn] = []


class Response:
    __slots__ = ("status", "headers", "content")

    def __init__(self, status: int, headers: Dict[str, str], content: bytes) -> None:
        self.status = status
        self.headers = headers
        self.content = content


class Pool:
    """Keep-alive connections per origin (``scheme://host:port``)."""

    def __init__(self, max_idle: int = 16, connect_timeout: float = 5.0) -> None:
        self._origins: Dict[str, _Origin] = {}
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout

    async def request(
        self, method: str, base: str, path: str, headers: Dict[str, str], body: Optional[bytes], timeout: float
    ) -> Response:
        """Sends one request and reads the whole answer within ``timeout`` seconds.

        Raises ConnectFailed (nothing sent), Broken (connection lost or not HTTP) or
        asyncio.TimeoutError."""
        o = self._origins.get(base)
        if o is None:
            o = self._origins[base] = _Origin(base)
        head = [f"{method} {path} HTTP/1.1\r\nHost: {o.host_header}\r\n"]
        for k, v in headers.items():
            head.append(f"{k}: {v}\r\n")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body) if body else 0}\r\n")
        head.append("\r\n")
        data = "".join(head).encode("latin-1")
        if body:
            data += body
        if _PY311:
            async with asyncio.timeout(timeout):
                return await self._send(o, data, method)
        return await asyncio.wait_for(self._send(o, data, method), timeout)

    async def _send(self, o: _Origin, data: bytes, method: str) -> Response:
        # A kept-alive connection may have been closed by the server meanwhile: an
        # answer that ends before its first byte is sent again once, on a new one.
        while o.idle:
            conn = o.idle.pop()
            try:
                conn.writer.write(data)
                return await self._read(o, conn, method, reused=True)
            except _Stale:
                conn.close()
                continue
        conn = await self._connect(o)
        conn.writer.write(data)
        return await self._read(o, conn, method, reused=False)

    async def _connect(self, o: _Origin) -> _Conn:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(o.host, o.port, ssl=o.ssl, limit=1 << 20), self._connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectFailed(f"cannot connect to {o.host}:{o.port}: {e or type(e).__name__}") from None
        return _Conn(r, w)

    async def _read(self, o: _Origin, conn: _Conn, method: str, reused: bool) -> Response:
        ok = False
        try:
            reader = conn.reader
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if reused and not e.partial:
                    raise _Stale() from None
                raise Broken("the server closed the connection without answering") from None
            except asyncio.LimitOverrunError:
                raise Broken("answer headers too long") from None
            except (ConnectionError, OSError) as e:
                if reused:
                    raise _Stale() from None
                raise Broken(str(e) or type(e).__name__) from None
            status, headers, keep = _parse_head(raw)
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                content = b""
            elif "content-length" in headers:
                content = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower().endswith("chunked"):
                content = await _read_chunked(reader)
            else:
                content = await reader.read()
                keep = False
            ok = True
        except asyncio.IncompleteReadError:
            raise Broken("the connection closed in the middle of an answer") from None
        except (ConnectionError, OSError) as e:
            if isinstance(e, (_Stale, Broken)):
                raise
            raise Broken(str(e) or type(e).__name__) from None
        finally:
            if not ok:
                conn.close()
        if keep and len(o.idle) < self._max_idle:
            o.idle.append(conn)
        else:
            conn.close()
        return Response(status, headers, content)

    async def aclose(self) -> None:
        for o in self._origins.values():
            for c in o.idle:
                c.close()
            o.idle.clear()


class _Stale(OSError):
    """A reused connection turned out closed before any answer: retry on a new one."""


def _parse_head(raw: bytes) -> Tuple[int, Dict[str, str], bool]:
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    status_line = lines[0]
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise Broken(f"not an HTTP answer: {status_line[:80]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise Broken(f"bad status line: {status_line[:80]!r}") from None
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    conn = headers.get("connection", "").lower()
    keep = parts[0] == "HTTP/1.1" and "close" not in conn
    return status, headers, keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            # trailers, up to the empty line
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)

"""The worker's HTTP/1.1 client against a scripted socket server: bodies by length and
chunked, keep-alive reuse, a kept-alive connection the server closed, timeouts."""

from __future__ import annotations

import asyncio

import pytest

from muster._http11 import Broken, ConnectFailed, Pool
from conftest import free_port


def serve(answers):
    """A server that reads one request per answer on each connection and writes the
    next answer; ``None`` closes the connection instead. Returns (start, requests)."""
    requests = []
    connections = []

    async def handle(reader, writer):
        connections.append(writer)
        while answers:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length) if length else b""
            requests.append((head, body))
            answer = answers.pop(0)
            if answer is None:
                writer.close()
                return
            if answer == "hang":
                await asyncio.sleep(10)
                return
            writer.write(answer)
            await writer.drain()
        writer.close()

    async def start():
        port = free_port()
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        return server, f"http://127.0.0.1:{port}"

    return start, requests, connections


def run(coro):
    return asyncio.run(coro)


def test_bodies_by_length_and_chunked_over_one_kept_alive_connection():
    start, requests, conns = serve([
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ])

    async def main():
        server, base = await start()
        pool = Pool()
        a = await pool.request("POST", base, "/a", {"X-Test": "1"}, b'{"x":1}', 5)
        b = await pool.request("GET", base, "/b", {}, None, 5)
        c = await pool.request("DELETE", base, "/c", {}, None, 5)
        await pool.aclose()
        server.close()
        return a, b, c

    a, b, c = run(main())
    assert (a.status, a.content, a.headers["content-type"]) == (200, b"{}", "application/json")
    assert (b.status, b.content) == (201, b"[1,2]")
    assert (c.status, c.content) == (204, b"")
    assert len(conns) == 1, "the connection was not kept alive"
    head, body = requests[0]
    assert head.startswith(b"POST /a HTTP/1.1\r\nHost: 127.0.0.1:") and b"X-Test: 1\r\n" in head
    assert body == b'{"x":1}'


def test_a_kept_alive_connection_the_server_closed_is_replaced():
    start, requests, conns = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", None,
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"])

    async def main():
        server, base = await start()
        pool = Pool()
        first = await pool.request("GET", base, "/", {}, None, 5)
        second = await pool.request("GET", base, "/", {}, None, 5)  # old connection closes: sent again
        await pool.aclose()
        server.close()
        return first, second

    first, second = run(main())
    assert (first.content, second.content) == (b"a", b"b")
    assert len(conns) == 2


def test_connection_close_and_errors():
    start, _, conns = serve([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
                             b"garbage\r\n\r\n", "hang"])

    async def main():
        server, base = await start()
        pool = Pool()
        r = await pool.request("GET", base, "/", {}, None, 5)
        with pytest.raises(Broken):
            await pool.request("GET", base, "/", {}, None, 5)
        with pytest.raises(asyncio.TimeoutError):
            await pool.request("GET", base, "/", {}, None, 0.2)
        with pytest.raises(ConnectFailed):
            await pool.request("GET", f"http://127.0.0.1:{free_port()}", "/", {}, None, 5)
        await pool.aclose()
        server.close()
        return r

    assert run(main()).content == b"x"
    assert len(conns) == 3

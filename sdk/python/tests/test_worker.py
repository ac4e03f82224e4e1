"""The worker in this process (on a thread) against a real server: handlers, retries,
cancellation, progress, renewals, fail-over."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from conftest import ADMIN_TOKEN, free_port, wait_until
from muster import Client, Forbidden, NonRetryable, Unauthorized, Worker

FAST_RETRY = {"initial_ms": 50, "max_ms": 100}


def test_sync_and_async_handlers_see_their_context(client, queue, start_worker):
    w = Worker(queues=[queue], concurrency=8)
    threads = set()

    @w.task("sync")
    def sync(payload, ctx):
        threads.add(threading.current_thread().name)
        return {"id": ctx.task_id, "attempt": ctx.attempt, "fence": ctx.fence, "kind": ctx.kind, "p": payload}

    @w.task("async")
    async def async_(payload, ctx):
        await asyncio.sleep(0.01)
        return {"id": ctx.task_id, "attempt": ctx.attempt, "fence": ctx.fence, "queue": ctx.queue, "p": payload,
                "loop": threading.current_thread().name}

    tw = start_worker(w)
    a = client.submit("sync", {"x": 1}, queue=queue)
    b = client.submit("async", [1, 2], queue=queue)
    ra, rb = client.wait(a, timeout=30), client.wait(b, timeout=30)
    assert ra.state == rb.state == "succeeded"
    assert ra.result == {"id": a.id, "attempt": 1, "fence": 1, "kind": "sync", "p": {"x": 1}}
    assert rb.result["id"] == b.id and rb.result["queue"] == queue and rb.result["p"] == [1, 2]
    # sync handlers run on the pool's threads, async ones on the worker's loop thread
    assert threads and all(n.startswith("muster-handler") for n in threads)
    assert rb.result["loop"] == tw.thread.name
    assert ra.node == w.node_id or ra.node


def test_many_tasks_go_through_in_batches(client, queue, start_worker):
    w = Worker(queues=[queue], concurrency=32)

    @w.task("noop")
    async def noop(payload, ctx):
        return payload

    @w.task("snoop")
    def snoop(payload, ctx):
        return payload

    start_worker(w)
    ids = client.submit_many([{"kind": "noop" if i % 2 else "snoop", "payload": i} for i in range(400)], queue=queue)
    results = [client.wait(i, timeout=60) for i in ids]
    assert [t.result for t in results] == list(range(400))
    assert w.stats["succeeded"] == 400
    # Batches, not a call per task: a lease call brings many, a report call answers many.
    print("lease calls", w.stats["lease_calls"], "report calls", w.stats["report_calls"])
    assert w.stats["lease_calls"] <= 100 and w.stats["report_calls"] <= 100, w.stats


def test_a_failing_task_is_retried_then_succeeds(client, queue, start_worker):
    w = Worker(queues=[queue])

    @w.task("flaky")
    def flaky(payload, ctx):
        if ctx.attempt < 3:
            raise RuntimeError(f"boom on attempt {ctx.attempt}")
        return {"ok": ctx.attempt}

    start_worker(w)
    t = client.submit("flaky", queue=queue, max_attempts=3, backoff=FAST_RETRY)
    done = client.wait(t, timeout=30)
    assert done.state == "succeeded" and done.attempts == 3 and done.result == {"ok": 3}


def test_a_retryable_error_carries_its_message_and_traceback(client, queue, start_worker):
    w = Worker(queues=[queue])

    @w.task("bad")
    async def bad(payload, ctx):
        raise ValueError("the payload is wrong")

    start_worker(w)
    done = client.wait(client.submit("bad", queue=queue, max_attempts=2, backoff=FAST_RETRY), timeout=30)
    assert done.state == "failed" and done.attempts == 2
    assert done.error.startswith("ValueError: the payload is wrong")
    assert "Traceback" in done.error and "in bad" in done.error


def test_non_retryable_fails_the_task_for_good(client, queue, start_worker):
    w = Worker(queues=[queue])

    @w.task("nope")
    def nope(payload, ctx):
        raise NonRetryable("invalid input: no such user")

    start_worker(w)
    done = client.wait(client.submit("nope", queue=queue, max_attempts=5), timeout=30)
    assert done.state == "failed" and done.attempts == 1
    assert done.error == "invalid input: no such user"


def test_a_result_that_is_not_json_fails_the_task(client, queue, start_worker):
    w = Worker(queues=[queue])

    @w.task("obj")
    def obj(payload, ctx):
        return object()

    start_worker(w)
    done = client.wait(client.submit("obj", queue=queue, max_attempts=3), timeout=30)
    assert done.state == "failed" and done.attempts == 1 and "not JSON" in done.error


def test_an_unknown_kind_fails_the_attempt_and_names_the_handlers(client, queue, start_worker):
    w = Worker(queues=[queue])
    w.register("known", lambda payload, ctx: None)
    start_worker(w)
    done = client.wait(client.submit("unknown", queue=queue, max_attempts=1), timeout=30)
    assert done.state == "failed" and "no handler for kind 'unknown'" in done.error and "known" in done.error


def test_cancellation_reaches_running_sync_and_async_handlers(client, queue, start_worker):
    w = Worker(queues=[queue], concurrency=4)
    seen = {}
    started = {"sync": threading.Event(), "async": threading.Event()}

    @w.task("sync")
    def sync(payload, ctx):
        started["sync"].set()
        stopped = ctx.cancel_event.wait(30)
        seen["sync"] = (stopped, ctx.cancelled, ctx.cancel_reason)
        return "ignored"

    @w.task("async")
    async def async_(payload, ctx):
        started["async"].set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen["async"] = (ctx.cancelled, ctx.cancel_reason)
            raise

    start_worker(w)
    a = client.submit("sync", queue=queue)
    b = client.submit("async", queue=queue)
    assert started["sync"].wait(10) and started["async"].wait(10)
    t0 = time.monotonic()
    assert client.cancel(a).cancel_requested
    client.cancel(b)
    da, db = client.wait(a, timeout=10), client.wait(b, timeout=10)
    assert da.state == db.state == "cancelled"
    assert time.monotonic() - t0 < 5  # a heartbeat (300 ms here) carries it, not the lease TTL
    wait_until(lambda: len(seen) == 2, 5, what="handlers to see the cancel")
    assert seen["sync"] == (True, True, "cancelled")
    assert seen["async"] == (True, "cancelled")


def test_an_async_handler_can_await_its_cancellation(client, queue, start_worker):
    w = Worker(queues=[queue])
    seen = []

    @w.task("watch")
    async def watch(payload, ctx):
        assert not await ctx.wait_cancelled(0.01)
        try:
            await ctx.wait_cancelled()
        finally:
            seen.append(ctx.cancelled)

    start_worker(w)
    t = client.submit("watch", queue=queue)
    wait_until(lambda: client.get(t).state == "running", 10, what="running")
    client.cancel(t)
    assert client.wait(t, timeout=10).state == "cancelled"
    wait_until(lambda: seen == [True], 5, what="handler to end")


def test_progress_is_visible_while_the_task_runs(client, queue, start_worker):
    w = Worker(queues=[queue])
    go = threading.Event()

    @w.task("steps")
    def steps(payload, ctx):
        ctx.progress({"done": 1, "total": 2})
        go.wait(20)
        ctx.progress({"done": 2, "total": 2})
        return "ok"

    @w.task("asteps")
    async def asteps(payload, ctx):
        ctx.progress({"phase": "a"})
        while not go.is_set():
            await asyncio.sleep(0.02)
        return "ok"

    start_worker(w)
    t = client.submit("steps", queue=queue)
    u = client.submit("asteps", queue=queue)
    wait_until(lambda: client.get(t).progress == {"done": 1, "total": 2}, 10, what="sync progress")
    wait_until(lambda: client.get(u).progress == {"phase": "a"}, 10, what="async progress")
    go.set()
    assert client.wait(t, timeout=10).state == "succeeded"
    assert client.wait(u, timeout=10).state == "succeeded"


def test_a_task_longer_than_its_lease_ttl_keeps_running(client, queue, start_worker):
    w = Worker(queues=[queue])

    @w.task("long")
    def long(payload, ctx):
        time.sleep(2.0)
        return {"fence": ctx.fence}

    @w.task("along")
    async def along(payload, ctx):
        await asyncio.sleep(2.0)
        return {"fence": ctx.fence}

    start_worker(w)
    a = client.submit("long", queue=queue, timeout_ms=400, max_attempts=1)
    b = client.submit("along", queue=queue, timeout_ms=400, max_attempts=1)
    for t in (a, b):
        done = client.wait(t, timeout=30)
        assert done.state == "succeeded", done.error
        assert done.attempts == 1 and done.result == {"fence": 1}


def test_max_run_ms_stops_an_attempt(client, queue, start_worker):
    w = Worker(queues=[queue])

    @w.task("forever")
    async def forever(payload, ctx):
        await asyncio.sleep(60)

    start_worker(w)
    done = client.wait(client.submit("forever", queue=queue, max_run_ms=300, max_attempts=1), timeout=30)
    assert done.state == "failed" and "max_run_ms" in done.error


def test_stop_drains_running_tasks_and_deregisters(client, queue, start_worker):
    w = Worker(queues=[queue], grace=10)
    started = threading.Event()

    @w.task("slow")
    async def slow(payload, ctx):
        started.set()
        await asyncio.sleep(0.8)
        return "finished"

    tw = start_worker(w)
    node = w.node_id
    t = client.submit("slow", queue=queue)
    assert started.wait(10)
    tw.stop()
    assert client.get(t).state == "succeeded"
    with pytest.raises(Exception) as e:
        client.request("GET", f"/v1/nodes/{node}")
    assert getattr(e.value, "status", None) == 404


def test_the_worker_fails_over_to_the_next_server(client, queue, server, start_worker):
    w = Worker(queues=[queue], server=[f"http://127.0.0.1:{free_port()}", server.url])

    @w.task("k")
    def k(payload, ctx):
        return "ok"

    start_worker(w)
    assert client.wait(client.submit("k", queue=queue), timeout=30).result == "ok"


def test_a_refused_token_raises_at_once(server, queue):
    w = Worker(queues=[queue], server=server.url, token="not-a-token")
    t0 = time.monotonic()
    with pytest.raises(Unauthorized) as e:
        w.run()
    assert e.value.status == 401 and time.monotonic() - t0 < 5


def test_a_token_without_the_agent_role_is_forbidden(server, queue):
    # A node token may only act for its own node: registering another one is refused.
    reg = httpx.post(server.url + "/v1/nodes", json={"name": "n", "queues": [queue]},
                     headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    w = Worker(queues=[queue], server=server.url, token=reg["token"])
    with pytest.raises((Forbidden, Unauthorized)):
        w.run()
    Client(server.url, token=ADMIN_TOKEN).request("DELETE", f"/v1/nodes/{reg['id']}")


def test_a_forgotten_node_registers_again_and_keeps_working(client, queue, start_worker):
    w = Worker(queues=[queue])

    @w.task("k")
    def k(payload, ctx):
        return ctx.node_id

    start_worker(w)
    first = w.node_id
    assert client.wait(client.submit("k", queue=queue), timeout=30).result == first
    client.request("DELETE", f"/v1/nodes/{first}")
    wait_until(lambda: w.node_id != first, 15, what="re-registration")
    assert client.wait(client.submit("k", queue=queue), timeout=30).result == w.node_id != first


def test_the_worker_can_send_its_calls_through_httpx(client, queue, start_worker):
    w = Worker(queues=[queue], concurrency=8, http="httpx")

    @w.task("k")
    async def k(payload, ctx):
        ctx.progress({"p": payload})
        return payload * 2

    start_worker(w)
    ids = client.submit_many([{"kind": "k", "payload": i} for i in range(20)], queue=queue)
    assert [client.wait(i, timeout=30).result for i in ids] == [i * 2 for i in range(20)]
    with pytest.raises(ValueError):
        Worker(queues=[queue], http="urllib")


def test_a_result_too_large_for_the_server_fails_the_task_for_good(client, queue, start_worker):
    w = Worker(queues=[queue])

    @w.task("big")
    def big(payload, ctx):
        return "x" * (2 << 20)

    start_worker(w)
    done = client.wait(client.submit("big", queue=queue, max_attempts=3), timeout=30)
    assert done.state == "failed" and done.attempts == 1 and "bytes" in done.error


def test_a_result_the_server_refuses_fails_the_task_for_good(client, queue, start_worker, monkeypatch):
    import muster.worker

    monkeypatch.setattr(muster.worker, "MAX_RESULT_BYTES", 64 << 20)  # skip the worker's own check
    w = Worker(queues=[queue])

    @w.task("big")
    def big(payload, ctx):
        return "x" * (2 << 20)

    start_worker(w)
    done = client.wait(client.submit("big", queue=queue, max_attempts=3), timeout=30)
    assert done.state == "failed" and done.attempts == 1
    assert "the server refused the result (413" in done.error


@pytest.mark.parametrize("flavour", ["async", "sync"])
def test_prefetched_tasks_wait_for_a_slot_and_a_cancel_reaches_them_before_they_start(
    client, server, queue, start_worker, flavour
):
    w = Worker(queues=[queue], concurrency=2, prefetch=3)
    started = []
    gate = threading.Event()
    lock = threading.Lock()
    at_once = {"now": 0, "most": 0}

    def enter(task_id):
        with lock:
            started.append(task_id)
            at_once["now"] += 1
            at_once["most"] = max(at_once["most"], at_once["now"])

    def leave():
        with lock:
            at_once["now"] -= 1

    if flavour == "async":
        @w.task("hold")
        async def hold(payload, ctx):
            enter(ctx.task_id)
            while not gate.is_set():
                await asyncio.sleep(0.02)
            leave()
    else:
        @w.task("hold")
        def hold(payload, ctx):
            enter(ctx.task_id)
            gate.wait(30)
            leave()

    start_worker(w)
    ids = [client.submit("hold", queue=queue).id for _ in range(6)]
    # Five leases held (two running, three prefetched), the sixth waits on the server.
    wait_until(lambda: sum(client.get(i).state == "running" for i in ids) == 5, 20, what="five leases")
    time.sleep(0.3)
    assert len(started) == 2
    nodes = httpx.get(server.url + "/v1/nodes", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    mine = [n for n in nodes["items"] if n["id"] == w.node_id]
    assert mine and mine[0]["capacity"] == 5
    waiting = next(i for i in ids if client.get(i).state == "running" and i not in started)
    client.cancel(waiting)
    assert client.wait(waiting, timeout=15).state == "cancelled"
    gate.set()
    for i in ids:
        if i != waiting:
            assert client.wait(i, timeout=30).state == "succeeded"
    assert waiting not in started
    assert len(started) == 5 and at_once["most"] == 2

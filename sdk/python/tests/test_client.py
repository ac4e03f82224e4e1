"""The client against a real server: submit, wait, batches, listing, typed errors."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from conftest import ADMIN_TOKEN, free_port
from muster import AsyncClient, Client, Conflict, Invalid, MusterError, NotFound, Task, TransportError, Unauthorized, Worker


def test_submit_returns_the_stored_task(client, queue):
    t = client.submit("add", {"a": 1, "b": 2}, queue=queue, priority=5, max_attempts=3, timeout_ms=5000)
    assert isinstance(t, Task)
    assert t.id.endswith("." + queue)
    assert (t.kind, t.queue, t.priority, t.max_attempts, t.timeout_ms) == ("add", queue, 5, 3, 5000)
    assert t.state == "pending" and t.attempts == 0 and t.payload == {"a": 1, "b": 2}
    assert t.result is None and t.error is None  # absent fields read as None
    assert client.get(t.id) .id == t.id


def test_wait_returns_the_result_once_a_worker_finished(client, queue, start_worker):
    w = Worker(queues=[queue], concurrency=4)

    @w.task("add")
    def add(payload, ctx):
        return {"sum": payload["a"] + payload["b"]}

    start_worker(w)
    t = client.submit("add", {"a": 1, "b": 2}, queue=queue)
    done = client.wait(t.id, timeout=30)
    assert done.state == "succeeded" and done.done and done.succeeded
    assert done.result == {"sum": 3}
    assert done.attempts == 1


def test_wait_returns_the_task_as_it_stands_at_the_timeout(client, queue):
    t = client.submit("nobody-runs-this", queue=queue)
    got = client.wait(t, timeout=0.3)
    assert got.state == "pending" and not got.done


def test_submit_many_returns_ids_in_order_with_the_default_queue(client, queue):
    ids = client.submit_many(
        [{"kind": "add", "payload": {"n": i}} for i in range(5)] + [{"kind": "x", "queue": queue + "-other"}],
        queue=queue,
    )
    assert len(ids) == 6
    assert [client.get(i).payload for i in ids[:5]] == [{"n": i} for i in range(5)]
    assert client.get(ids[5]).queue == queue + "-other"


def test_delay_and_run_at_schedule_the_task(client, queue):
    a = client.submit("later", queue=queue, delay=60)
    b = client.submit("later", queue=queue, run_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    assert a.state == "scheduled" and b.state == "scheduled"


def test_idempotency_key_makes_a_repeat_answer_the_first_task(client, queue):
    a = client.submit("once", queue=queue, idempotency_key="k-" + queue)
    b = client.submit("once", queue=queue, idempotency_key="k-" + queue)
    assert a.id == b.id


def test_list_cancel_retry_and_delete(client, queue):
    ids = client.submit_many([{"kind": "k", "payload": i} for i in range(3)], queue=queue)
    page = client.list(queue=queue, state="pending", limit=10)
    assert sorted(t.id for t in page) == sorted(ids)
    assert sorted(t.id for t in client.iter_tasks(queue=queue, page_size=1)) == sorted(ids)
    c = client.cancel(ids[0])
    assert c.state == "cancelled"
    r = client.retry(ids[0])
    assert r.state == "pending"
    client.cancel(ids[0])
    client.delete(ids[0])
    with pytest.raises(NotFound):
        client.get(ids[0])


def test_errors_are_typed_and_carry_the_problem_code(client, queue, server):
    with pytest.raises(NotFound) as e:
        client.get("01JD8XK2ZQ8M3V6T1XW0Q2E7AB." + queue)
    assert e.value.status == 404 and e.value.code == "not_found" and e.value.detail
    with pytest.raises(Invalid) as e:
        client.submit("add", queue=queue, priority=42)
    assert e.value.status == 422 and e.value.code
    with pytest.raises(Invalid):
        client.submit("add", queue=queue, no_such_field=1)
    t = client.submit("k", queue=queue)
    client.cancel(t)
    with pytest.raises(Conflict) as e:
        client.delete(client.submit("k", queue=queue))
    assert e.value.status == 409
    with Client(server.url, token="wrong") as bad:
        with pytest.raises(Unauthorized) as e:
            bad.get(t.id)
    assert e.value.status == 401 and e.value.code == "unauthorized"
    assert isinstance(e.value, MusterError)


def test_an_unreachable_server_is_a_transport_error(queue):
    with Client(f"http://127.0.0.1:{free_port()}", token="x", retries=1) as c:
        with pytest.raises(TransportError) as e:
            c.get("01JD8XK2ZQ8M3V6T1XW0Q2E7AB." + queue)
    assert e.value.status is None and e.value.transient


def test_the_client_fails_over_to_the_next_server(server, queue):
    dead = f"http://127.0.0.1:{free_port()}"
    with Client(f"{dead},{server.url}", token=ADMIN_TOKEN) as c:
        t = c.submit("k", queue=queue)
        assert c.get(t.id).id == t.id
        assert c.server == server.url


def test_client_reads_the_environment(server, queue, monkeypatch):
    monkeypatch.setenv("MUSTER_SERVER", server.url)
    monkeypatch.setenv("MUSTER_TOKEN", ADMIN_TOKEN)
    with Client() as c:
        assert c.submit("k", queue=queue).queue == queue


def test_async_client_has_the_same_calls(server, queue, start_worker):
    w = Worker(queues=[queue])

    @w.task("mul")
    async def mul(payload, ctx):
        return payload["a"] * payload["b"]

    start_worker(w)

    async def main():
        async with AsyncClient(server.url, token=ADMIN_TOKEN) as c:
            t = await c.submit("mul", {"a": 6, "b": 7}, queue=queue)
            ids = await c.submit_many([{"kind": "mul", "payload": {"a": i, "b": 2}} for i in range(3)], queue=queue)
            done = await c.wait(t.id, timeout=30)
            rest = [await c.wait(i, timeout=30) for i in ids]
            with pytest.raises(NotFound):
                await c.get("01JD8XK2ZQ8M3V6T1XW0Q2E7AB." + queue)
            return done, rest

    done, rest = asyncio.run(main())
    assert done.result == 42
    assert [t.result for t in rest] == [0, 2, 4]

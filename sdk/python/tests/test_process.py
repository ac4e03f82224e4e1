"""Workers as real processes (``python -m muster worker``): kill -9 mid-task, SIGTERM
drain, a server restart during a run, a bad token."""

from __future__ import annotations

import json
import signal
import time

import pytest

from conftest import ADMIN_TOKEN, ThreadWorker, wait_until
from muster import Client, Conflict, NotFound, Worker


def _running(client, t):
    return client.get(t).state == "running"


def test_kill_9_mid_task_is_finished_by_another_worker_with_one_accepted_result(
    client, queue, spawn_worker, start_worker, tmp_path
):
    marks = tmp_path / "marks"
    marks.mkdir()
    a = spawn_worker("sleepy", env={"TEST_QUEUE": queue, "TEST_WORKER_ID": "A", "TEST_MARK_DIR": str(marks)})
    t = client.submit("sleep", {"seconds": 30}, queue=queue, timeout_ms=1000, max_attempts=3, backoff={"initial_ms": 0, "max_ms": 0})
    first = marks / f"{t.id}.1.json"
    wait_until(first.exists, 20, what="worker A to start the task")
    stale = json.loads(first.read_text())
    a.proc.send_signal(signal.SIGKILL)
    a.wait(10)

    b = Worker(queues=[queue], concurrency=2)

    @b.task("sleep")
    def again(payload, ctx):
        return {"by": "B", "fence": ctx.fence, "attempt": ctx.attempt}

    start_worker(b)
    done = client.wait(t, timeout=30)
    assert done.state == "succeeded"
    assert done.result == {"by": "B", "fence": 2, "attempt": 2}
    assert done.attempts == 2 and stale["fence"] == 1
    # A's lease is dead: its late result would be refused and change nothing.
    with pytest.raises(Conflict) as e:
        client.request("POST", f"/v1/tasks/{t.id}/complete", json={"lease_token": stale["token"], "result": {"by": "A"}})
    assert e.value.code == "lease_conflict"
    assert client.get(t).result == {"by": "B", "fence": 2, "attempt": 2}


def test_sigterm_drains_the_running_task_and_takes_no_new_one(client, queue, spawn_worker, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    w = spawn_worker("sleepy", env={"TEST_QUEUE": queue, "TEST_WORKER_ID": "A", "TEST_MARK_DIR": str(marks)})
    t = client.submit("sleep", {"seconds": 1.5}, queue=queue)
    wait_until((marks / f"{t.id}.1.json").exists, 20, what="the task to start")
    node = json.loads((marks / f"{t.id}.1.json").read_text())["node"]
    w.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    later = client.submit("sleep", {"seconds": 0}, queue=queue)
    assert w.wait(15) == 0, w.output()
    done = client.get(t)
    assert done.state == "succeeded" and done.result["by"] == "A", done
    assert client.get(later).state in ("pending", "assigned"), "a draining worker leased a new task"
    with pytest.raises(NotFound):
        client.request("GET", f"/v1/nodes/{node}")


def test_sigterm_past_the_grace_hands_the_task_back(client, queue, spawn_worker, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    w = spawn_worker("sleepy", env={"TEST_QUEUE": queue, "TEST_GRACE": "0.5", "TEST_MARK_DIR": str(marks)})
    t = client.submit("sleep", {"seconds": 60}, queue=queue, max_attempts=3, backoff={"initial_ms": 60000, "max_ms": 60000})
    wait_until((marks / f"{t.id}.1.json").exists, 20, what="the task to start")
    t0 = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    assert w.wait(15) == 0, w.output()
    assert time.monotonic() - t0 < 8
    back = client.get(t)
    assert back.state == "retrying" and back.attempts == 1 and back.error == "worker shutting down"


def test_the_worker_rides_out_a_server_restart(own_server, queue):
    w = Worker(queues=[queue], concurrency=8, server=own_server.url, token=ADMIN_TOKEN)

    @w.task("step")
    async def step(payload, ctx):
        import asyncio

        await asyncio.sleep(0.05)
        return payload

    tw = ThreadWorker(w).start()
    try:
        with Client(own_server.url, token=ADMIN_TOKEN, retries=20) as c:
            before = c.submit_many([{"kind": "step", "payload": i, "timeout_ms": 3000} for i in range(40)], queue=queue)
            wait_until(lambda: w.stats["succeeded"] >= 5, 20, what="some tasks done")
            own_server.kill()
            time.sleep(1.0)
            own_server.start()
            after = c.submit_many([{"kind": "step", "payload": 100 + i, "timeout_ms": 3000} for i in range(20)], queue=queue)
            results = [c.wait(i, timeout=60) for i in before + after]
        assert all(r.state == "succeeded" for r in results), [r for r in results if r.state != "succeeded"][:3]
        assert [r.result for r in results] == list(range(40)) + [100 + i for i in range(20)]
        assert tw.thread.is_alive() and tw.error is None
    finally:
        tw.stop()


def test_a_bad_token_is_a_clear_error_and_exit_code_1(queue, spawn_worker):
    w = spawn_worker("sleepy", env={"TEST_QUEUE": queue, "MUSTER_TOKEN": "wrong-token"})
    assert w.wait(15) == 1
    out = w.output()
    assert "refused the token" in out and "401" in out, out
    assert out.count("/v1/nodes") <= 2, "retried a refused token"


def test_python_m_muster_worker_builds_a_worker_from_a_factory(client, queue, spawn_worker):
    w = spawn_worker("factory:make", env={"TEST_QUEUE": queue}, args=["--concurrency", "3"])
    done = client.wait(client.submit("hello", {"name": "muster"}, queue=queue), timeout=30)
    assert done.result == {"hello": "muster"}
    w.proc.send_signal(signal.SIGINT)
    assert w.wait(15) == 0, w.output()
    assert "concurrency 3" in w.output()


def test_a_module_without_the_worker_is_exit_code_1(queue, spawn_worker):
    w = spawn_worker("factory", env={"TEST_QUEUE": queue})  # looks for apps.factory:worker
    assert w.wait(15) == 1
    assert "no attribute 'worker'" in w.output()


def test_the_worker_rides_out_a_redis_outage(durable_redis, session_tmp, queue):
    from conftest import ServerProc

    srv = ServerProc(durable_redis.url, session_tmp)
    srv.start()
    w = Worker(queues=[queue], concurrency=8, server=srv.url, token=ADMIN_TOKEN)

    @w.task("step")
    async def step(payload, ctx):
        import asyncio

        await asyncio.sleep(0.05)
        return payload

    tw = ThreadWorker(w).start()
    try:
        with Client(srv.url, token=ADMIN_TOKEN, retries=30) as c:
            ids = c.submit_many([{"kind": "step", "payload": i, "timeout_ms": 5000} for i in range(40)], queue=queue)
            wait_until(lambda: w.stats["succeeded"] >= 5, 20, what="some tasks done")
            durable_redis.proc.kill()
            durable_redis.proc.wait(10)
            time.sleep(1.5)
            durable_redis.start()
            results = [c.wait(i, timeout=60) for i in ids]
        assert [r.result for r in results] == list(range(40)), [r for r in results if r.state != "succeeded"][:3]
        assert tw.thread.is_alive() and tw.error is None
    finally:
        tw.stop()
        srv.kill()

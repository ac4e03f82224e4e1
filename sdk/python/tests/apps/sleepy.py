"""A worker whose handler sleeps ``payload["seconds"]``; configured by environment.

TEST_QUEUE (required), TEST_WORKER_ID (put in results), TEST_GRACE (drain grace),
TEST_MARK_DIR (each attempt writes <task>.<attempt>.json there as it starts, with
its lease token, fence and node).
"""

import json
import os
import time

from muster import Worker

worker = Worker(
    queues=[os.environ["TEST_QUEUE"]],
    concurrency=4,
    grace=float(os.environ.get("TEST_GRACE", "10")),
)
WHO = os.environ.get("TEST_WORKER_ID", "?")
MARKS = os.environ.get("TEST_MARK_DIR")


@worker.task("sleep")
def sleep(payload, ctx):
    if MARKS:
        path = os.path.join(MARKS, f"{ctx.task_id}.{ctx.attempt}.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"token": ctx.lease_token, "fence": ctx.fence, "node": ctx.node_id, "pid": os.getpid()}, f)
        os.replace(path + ".tmp", path)
    time.sleep(payload.get("seconds", 1))
    return {"by": WHO, "fence": ctx.fence, "attempt": ctx.attempt, "node": ctx.node_id}

"""A module whose worker is built by a function (``apps.factory:make``)."""

import os

from muster import Worker


def make():
    w = Worker(queues=[os.environ["TEST_QUEUE"]], concurrency=2)

    @w.task("hello")
    async def hello(payload, ctx):
        return {"hello": payload["name"]}

    return w

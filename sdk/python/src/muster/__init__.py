"""muster: Python client and in-process worker for the muster task platform.

::

    from muster import Client, Worker, NonRetryable

    client = Client()                      # MUSTER_SERVER, MUSTER_TOKEN
    t = client.submit("add", {"a": 1, "b": 2}, queue="math")
    done = client.wait(t.id, timeout=30)

    worker = Worker(queues=["math"], concurrency=64)

    @worker.task("add")
    def add(payload, ctx):
        return {"sum": payload["a"] + payload["b"]}

    worker.run()
"""

from .client import TERMINAL_STATES, AsyncClient, Client, Task, TaskPage
from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    MusterError,
    NonRetryable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
)
from .worker import Context, Worker

__version__ = "0.1.0"

__all__ = [
    "Client",
    "AsyncClient",
    "Task",
    "TaskPage",
    "TERMINAL_STATES",
    "Worker",
    "Context",
    "NonRetryable",
    "MusterError",
    "TransportError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "Invalid",
    "RateLimited",
    "Unavailable",
    "ServerError",
]

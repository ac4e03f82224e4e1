"""``python -m muster worker pkg.module:worker``: runs a :class:`muster.Worker` found in
a module. Exit codes: 0 after a clean drain, 1 when the worker cannot run (token
refused, server away past the registration timeout, bad module), 2 for bad usage."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import List, Optional

from . import __version__
from .errors import Forbidden, MusterError, Unauthorized
from .worker import Worker


def load_worker(spec: str) -> Worker:
    """Imports ``module:attr`` (``attr`` defaults to ``worker``; dots walk attributes).
    A callable that is not a Worker is called to build one."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"{spec!r}: give module:attribute, e.g. app.tasks:worker")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj = module
    for part in (attr or "worker").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr or 'worker'!r}") from None
    if not isinstance(obj, Worker) and callable(obj):
        obj = obj()
    if not isinstance(obj, Worker):
        raise ValueError(f"{spec!r} is a {type(obj).__name__}, not a muster.Worker")
    return obj


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m muster", description="muster Python SDK")
    p.add_argument("--version", action="version", version=f"muster-sdk {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a Worker object found in a module",
                       description="Run a muster.Worker found in a module; SIGTERM/SIGINT drain it.")
    w.add_argument("target", metavar="MODULE:ATTR", help="e.g. app.tasks:worker (ATTR defaults to worker)")
    w.add_argument("--server", action="append", help="control-plane URL; repeat for fail-over (default: MUSTER_SERVER)")
    w.add_argument("--token", help="token allowed to register nodes (default: MUSTER_TOKEN)")
    w.add_argument("--queue", "-Q", action="append", dest="queues", help="queue to serve; repeat (overrides the worker's)")
    w.add_argument("--concurrency", "-c", type=int, help="tasks run at once (overrides the worker's)")
    w.add_argument("--tag", action="append", dest="tags", help="node tag; repeat")
    w.add_argument("--name", help="node name (default: host-pid)")
    w.add_argument("--grace", type=float, help="seconds running tasks get after SIGTERM")
    w.add_argument("--log-level", default=os.environ.get("MUSTER_LOG_LEVEL", "info"),
                   help="debug, info, warning or error (default: info)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: far too much for a worker's log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        worker = load_worker(args.target)
    except (ImportError, ValueError) as e:
        print(f"muster: cannot load the worker: {e}", file=sys.stderr)
        return 1
    if args.server:
        worker.server = args.server
    if args.token is not None:
        worker.token = args.token
    if args.queues:
        worker.queues = args.queues
    if args.concurrency is not None:
        worker.concurrency = args.concurrency
    if args.tags:
        worker.tags = args.tags
    if args.name:
        worker.name = args.name
    if args.grace is not None:
        worker.grace = args.grace
    try:
        worker.run()
    except (Unauthorized, Forbidden) as e:
        print(f"muster: the server refused the token ({e.status} {e.code}): {e.detail}", file=sys.stderr)
        return 1
    except MusterError as e:
        print(f"muster: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"muster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

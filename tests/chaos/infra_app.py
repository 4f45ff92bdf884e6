"""A chaos worker process with Redis wake-ups (``python -m tests.chaos.infra_app``).

The same durable functions, ledger and options as ``tests.chaos.app``, plus
``--redis URL --redis-prefix PREFIX``: the executor's notification backend is then a
``RedisBackend`` (instead of none on SQLite, or LISTEN/NOTIFY on PostgreSQL). Started by
``Fleet(module="tests.chaos.infra_app", extra_args=(...))``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from datetime import timedelta
from typing import Any

from stent import Stent

from . import app
from .ledger import LedgerWriter


async def serve(args: argparse.Namespace) -> None:
    from stent_postgres import PostgresBackend, SQLiteBackend
    from stent_redis import RedisBackend

    if args.target.startswith("postgres"):
        backend: Any = PostgresBackend(args.target, schema=args.schema or "public")
    else:
        backend = SQLiteBackend(args.target)
    await backend.init_db()
    notifications = None
    if args.redis:
        notifications = RedisBackend(args.redis, channel_prefix=args.redis_prefix,
                                     client_name=f"chaos-{os.getpid()}")
    app._ledger = LedgerWriter(args.ledger)
    app._executor = Stent(backend, notification_backend=notifications,
                          max_crash_recoveries=args.max_crash_recoveries)
    await app._executor.serve(
        worker_id=f"chaos-{os.getpid()}", max_concurrency=args.concurrency,
        lease_duration=timedelta(seconds=args.lease), poll_interval=args.poll,
        poll_interval_max=args.poll_max,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.infra_app")
    p.add_argument("target", help="PostgreSQL DSN or SQLite file")
    p.add_argument("--schema")
    p.add_argument("--ledger", required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--lease", type=float, default=3.0)
    p.add_argument("--poll", type=float, default=0.1)
    p.add_argument("--poll-max", type=float, default=0.5)
    p.add_argument("--max-crash-recoveries", type=int, default=10)
    p.add_argument("--redis", help="Redis URL of the notification backend")
    p.add_argument("--redis-prefix", default="stent")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()

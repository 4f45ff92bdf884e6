"""The worker process of ``stent demo``: ``python -m stent.cli.demo_worker DB_PATH``.

It registers the demo functions by importing :mod:`stent.cli.demo_workflow`, opens the
demo's SQLite file and serves until SIGTERM/SIGINT (which drain it) or SIGKILL (which is the
point of the demo). Short leases make a dead worker's tasks claimable again within seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from stent import Stent

__all__ = ["main", "serve"]


async def serve(db_path: str, *, lease: float, concurrency: int = 4) -> None:
    """Serve the demo functions from the SQLite database at ``db_path`` until drained.

    Args:
        db_path: the demo database (already initialised by the demo).
        lease: lease duration in seconds; heartbeats come four times per lease.
        concurrency: task slots.
    """
    from stent_postgres import SQLiteBackend

    from . import demo_workflow  # registers demo.* in Stent.default_registry

    del demo_workflow
    backend = SQLiteBackend(db_path)
    executor = Stent(backend)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, executor.request_worker_drain)
    try:
        await executor.serve(
            max_concurrency=concurrency,
            lease_duration=lease,
            heartbeat_interval=lease / 4,
            poll_interval=0.1,
            drain_grace_period=2.0,
        )
    finally:
        with contextlib.suppress(Exception):
            await executor.shutdown()
        await backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and serve. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m stent.cli.demo_worker",
                                     description="Worker process for 'stent demo'.")
    parser.add_argument("db_path", help="the demo's SQLite database file")
    parser.add_argument("--lease", type=float, default=2.0, help="lease duration in seconds")
    parser.add_argument("--concurrency", type=int, default=4, help="task slots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.db_path, lease=args.lease, concurrency=args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())

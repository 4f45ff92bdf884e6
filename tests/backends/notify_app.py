"""A worker process for the LISTEN/NOTIFY tests: it polls only every 30 s, so anything it
does sooner was started by a notification.

Run as ``python -m tests.backends.notify_app DSN SCHEMA READY_FILE``: once serving (its
LISTEN connection up), it writes its LISTEN connection's server pid to ``READY_FILE``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from stent import Stent

#: the worker's claim-loop poll interval (and its hub's): far longer than any test waits
POLL_S = 30.0


@Stent.durable(name="notifytest.step")
async def step(x: int) -> int:
    return x + 1


@Stent.durable(name="notifytest.stamp")
async def stamp(hold: float) -> dict[str, Any]:
    """Report when (wall clock) and where it ran; ``hold`` seconds between start and end."""
    started = time.time()
    value = await step(1)
    await asyncio.sleep(hold)
    return {"started": started, "finished": time.time(), "pid": os.getpid(), "value": value}


async def _serve(dsn: str, schema: str, ready_file: str) -> None:
    from stent_postgres import PostgresBackend
    from stent_postgres.listen import PostgresNotifications

    backend = PostgresBackend(dsn, schema=schema, min_pool_size=1, max_pool_size=4)
    executor = Stent(backend, poll_min_interval=POLL_S, poll_max_interval=POLL_S)
    nb = executor.notifications_backend
    assert isinstance(nb, PostgresNotifications)
    serving = asyncio.ensure_future(executor.serve(poll_interval=POLL_S, max_concurrency=4))
    await asyncio.wait_for(executor.wait_until_ready(), 30)
    await asyncio.sleep(0.2)  # the first (empty) claim is done: from now on it sleeps 30 s
    tmp = Path(ready_file + ".tmp")
    tmp.write_text(str(nb.listener_pid))
    tmp.rename(ready_file)
    await serving


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(sys.argv[1], sys.argv[2], sys.argv[3]))

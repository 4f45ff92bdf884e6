"""Durable functions and a worker process for the Redis notification tests.

Run as ``python -m tests.redis.redis_app DB REDIS_URL PREFIX POLL_INTERVAL [CLIENT_NAME]``:
a worker on the SQLite file ``DB`` (``REDIS_URL`` ``-`` means no notification backend) that
prints ``READY`` once it claims work and logs to stderr at INFO.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from stent import Stent


@Stent.durable(name="redistest.add1")
async def add1(x: int) -> int:
    return x + 1


@Stent.durable(name="redistest.chain")
async def chain(x: int, n: int) -> int:
    for _ in range(n):
        x = await add1(x)
    return x


@Stent.durable(name="redistest.nap")
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@Stent.durable(name="redistest.slow_chain")
async def slow_chain(steps: int, seconds: float) -> int:
    for _ in range(steps):
        await nap(seconds)
    return steps


@Stent.durable(name="redistest.fanout")
async def fanout(n: int) -> int:
    return sum(await add1.map(range(n)))


async def _serve(db: str, redis_url: str, prefix: str, poll_interval: float,
                 client_name: str) -> None:
    from stent_postgres import SQLiteBackend
    from stent_redis import RedisBackend

    backend = SQLiteBackend(db)
    await backend.init_db()
    notifications = None
    if redis_url != "-":
        notifications = RedisBackend(redis_url, channel_prefix=prefix, client_name=client_name)
    executor = Stent(backend, notification_backend=notifications)
    worker = asyncio.ensure_future(executor.serve(poll_interval=poll_interval,
                                                  max_concurrency=16))
    ready = asyncio.ensure_future(executor.wait_until_ready())
    await asyncio.wait({worker, ready}, return_when=asyncio.FIRST_COMPLETED)
    if worker.done():
        worker.result()
    print("READY", flush=True)
    await worker


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("stent.notifications.redis").setLevel(logging.DEBUG)
    db, url, prefix, poll = sys.argv[1:5]
    name = sys.argv[5] if len(sys.argv) > 5 else "stent-test-worker"
    asyncio.run(_serve(db, url, prefix, float(poll), name))

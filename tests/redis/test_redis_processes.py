"""Wake-ups across processes through the shared Redis (``$STENT_TEST_REDIS_URL``).

The worker runs in a child process and polls only every 30 s; the waiting executor polls
only every 10-30 s. A workflow that finishes in well under a second therefore proves both
wake-ups went through Redis: the dispatch woke the worker, and the worker's completion woke
the waiter.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio
from stent import Stent
from stent_postgres import SQLiteBackend
from stent_redis import RedisBackend

from . import redis_app
from .redis_server import DEFAULT_URL, URL_ENV
from .worker_process import WorkerProcess

pytestmark = pytest.mark.slow


async def wait_for_subscribers(url: str, channel: str, count: int, timeout: float = 10) -> None:
    """Wait until ``count`` connections listen on ``channel``."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                [(_, n)] = await client.pubsub_numsub(channel)
                if n >= count:
                    return
                await asyncio.sleep(0.02)
    finally:
        await client.aclose()


async def test_dispatch_wakes_a_worker_process_and_completion_wakes_the_waiter(
    tmp_path: Path, redis_url: str,
) -> None:
    db = tmp_path / "shared.sqlite"
    backend = SQLiteBackend(db)
    await backend.init_db()
    prefix = f"stent-test-{uuid.uuid4().hex[:12]}"  # other tests and sessions share this Redis
    worker = WorkerProcess(db, redis_url, prefix, 30, tmp_path / "worker.log")
    executor = Stent(backend, notification_backend=RedisBackend(redis_url, channel_prefix=prefix),
                     poll_min_interval=10, poll_max_interval=30)
    try:
        await worker.ready()
        await wait_for_subscribers(redis_url, f"{prefix}:work", 1)
        await asyncio.sleep(0.2)  # the worker's first poll is over: from now on it sleeps 30 s
        elapsed = []
        for i in range(5):
            t0 = time.perf_counter()
            eid = await executor.dispatch(redis_app.chain, i, 1)
            result = await asyncio.wait_for(executor.wait_for(eid), 15)
            elapsed.append(time.perf_counter() - t0)
            assert result.value == i + 1
        print(f"\ndispatch -> result through Redis, ms: {[round(e * 1000, 1) for e in elapsed]}")
        assert max(elapsed) < 1.0, elapsed
        assert worker.alive
    finally:
        worker.stop()
        await executor.shutdown()
        await backend.close()


async def test_a_worker_without_notifications_only_finds_work_by_polling(
    tmp_path: Path, redis_url: str,
) -> None:
    # The control for the test above: the same wiring without Redis in the worker is slow.
    db = tmp_path / "shared.sqlite"
    backend = SQLiteBackend(db)
    await backend.init_db()
    prefix = f"stent-test-{uuid.uuid4().hex[:12]}"
    worker = WorkerProcess(db, None, prefix, 3, tmp_path / "worker.log")
    executor = Stent(backend, notification_backend=RedisBackend(redis_url, channel_prefix=prefix),
                     poll_min_interval=0.1, poll_max_interval=0.1)
    try:
        await worker.ready()
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        eid = await executor.dispatch(redis_app.chain, 1, 1)
        assert (await asyncio.wait_for(executor.wait_for(eid), 15)).value == 2
        assert time.perf_counter() - t0 > 1.0
    finally:
        worker.stop()
        await executor.shutdown()
        await backend.close()


@pytest.mark.skipif(
    os.environ.get(URL_ENV, DEFAULT_URL) != DEFAULT_URL,
    reason=f"{URL_ENV} points elsewhere; the guide's example uses the Redis at localhost:6379",
)
async def test_the_deployment_guides_wiring_works_as_written(tmp_path: Path, redis_url: str) -> None:
    from ..engine.helpers import start_worker, stop_worker

    backend = Stent.backends.SQLiteBackend(str(tmp_path / "guide.sqlite"))
    await backend.init_db()
    notification_backend = Stent.notifications.RedisBackend("redis://localhost:6379")
    executor = Stent(
        backend=backend,
        notification_backend=notification_backend
    )
    task = await start_worker(executor)
    try:
        eid = await executor.dispatch(redis_app.chain, 40, 2)
        assert (await asyncio.wait_for(executor.wait_for(eid), 10)).value == 42
        assert notification_backend.subscribed
    finally:
        await stop_worker(executor, task)
        await backend.close()
    assert not notification_backend.subscribed


async def test_cancel_reaches_a_step_running_in_a_worker_process_through_redis(
    tmp_path: Path, redis_url: str,
) -> None:
    # The worker's heartbeat is 100 s away (default 5 min lease): only the cancel message can
    # stop its step within seconds.
    from stent.errors import ExecutionCancelledError

    db = tmp_path / "shared.sqlite"
    backend = SQLiteBackend(db)
    await backend.init_db()
    prefix = f"stent-test-{uuid.uuid4().hex[:12]}"
    worker = WorkerProcess(db, redis_url, prefix, 30, tmp_path / "worker.log")
    executor = Stent(backend, notification_backend=RedisBackend(redis_url, channel_prefix=prefix),
                     poll_min_interval=10, poll_max_interval=30)
    try:
        await worker.ready()
        await wait_for_subscribers(redis_url, f"{prefix}:cancel", 1)
        eid = await executor.dispatch(redis_app.slow_chain, 1, 60)
        async with asyncio.timeout(5):
            while (await executor.state_of(eid)).state != "running":
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the step is under way in the worker
        t0 = time.perf_counter()
        await executor.cancel(eid)
        result = await asyncio.wait_for(executor.wait_for(eid), 15)
        elapsed = time.perf_counter() - t0
        assert isinstance(result.error, ExecutionCancelledError)
        assert (await executor.state_of(eid)).state == "cancelled"
        assert elapsed < 2.0, elapsed
        assert worker.alive
    finally:
        worker.stop()
        await executor.shutdown()
        await backend.close()

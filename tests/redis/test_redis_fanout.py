"""10,000 awaits cost one subscription and one publisher: two connections, however many."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio
from stent import Stent
from stent_redis import RedisBackend
from stent_testing import InMemoryBackend

from ..engine.helpers import start_worker, stop_worker
from . import redis_app
from .redis_server import PrivateRedis

pytestmark = pytest.mark.slow

N = 10_000


async def _accepted(admin: redis.asyncio.Redis) -> int:
    return int((await admin.info("stats"))["total_connections_received"])


@pytest.mark.timeout(300)
async def test_ten_thousand_awaits_use_at_most_two_redis_connections(
    private_redis: PrivateRedis,
) -> None:
    name = "stent-fanout-under-test"
    admin = redis.asyncio.Redis(host="127.0.0.1", port=private_redis.port,
                                client_name="test-admin", single_connection_client=True)
    await admin.ping()
    # Counted by the server itself: every connection it accepted from now on is ours.
    accepted_before = (await admin.info("stats"))["total_connections_received"]
    peak = 0
    seen_ids: set[str] = set()
    everyone: dict[str, str] = {}  # every connection seen: id -> name
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            clients = await admin.client_list()
            everyone.update((c["id"], c.get("name", "")) for c in clients)
            ours = [c for c in clients if c.get("name") == name]
            peak = max(peak, len(ours))
            seen_ids.update(c["id"] for c in ours)
            await asyncio.sleep(0.05)

    notifications = RedisBackend(private_redis.url, client_name=name)
    executor = Stent(InMemoryBackend(), notification_backend=notifications)
    sampler = asyncio.ensure_future(sample())
    worker = await start_worker(executor)
    try:
        t0 = time.perf_counter()
        eid = await executor.dispatch(redis_app.fanout, N)
        result = await asyncio.wait_for(executor.wait_for(eid), 240)
        elapsed = time.perf_counter() - t0
    finally:
        await stop_worker(executor, worker)
        stop.set()
        await sampler
    accepted = (await admin.info("stats"))["total_connections_received"] - accepted_before
    await admin.aclose()

    assert result.value == sum(range(1, N + 1))
    stats = notifications.stats
    print(f"\n{N} awaits in {elapsed:.1f} s; Redis connections opened: {accepted}, "
          f"peak at once: {peak}; {stats}; seen: {everyone}")
    assert accepted <= 2 and peak <= 2 and len(seen_ids) <= 2
    assert stats.clients_created == 2
    # no message per await: a parent awaiting its map in this process is handed each
    # outcome in memory, and whatever does go out is coalesced
    assert stats.published_messages < N / 20


@pytest.mark.timeout(300)
async def test_ten_thousand_concurrent_wait_for_calls_share_two_connections(
    private_redis: PrivateRedis,
) -> None:
    # The waiting executor polls only every 10-30 s, so every one of these waits ends early
    # only because a `done` message reached it; its backend is named apart from the worker's.
    name = "stent-waiters-under-test"
    admin = redis.asyncio.Redis(host="127.0.0.1", port=private_redis.port,
                                client_name="test-admin", single_connection_client=True)
    await admin.ping()
    storage = InMemoryBackend()
    waiting = RedisBackend(private_redis.url, client_name=name)
    client = Stent(storage, notification_backend=waiting, poll_min_interval=10,
                   poll_max_interval=30)
    worker_side = Stent(storage, notification_backend=RedisBackend(
        private_redis.url, client_name="stent-worker-side"))
    worker = await start_worker(worker_side, max_concurrency=500)
    seen_ids: set[str] = set()
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            seen_ids.update(c["id"] for c in await admin.client_list() if c.get("name") == name)
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    try:
        ids = [await client.dispatch(redis_app.add1, i) for i in range(N)]
        t0 = time.perf_counter()
        results = await asyncio.wait_for(
            asyncio.gather(*(client.wait_for(eid) for eid in ids)), 120)
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
        await sampler
        await stop_worker(worker_side, worker)
        await client.shutdown()
    await admin.aclose()
    assert [r.value for r in results] == [i + 1 for i in range(N)]
    print(f"\n{N} concurrent wait_for calls done in {elapsed:.1f} s; waiter's connections "
          f"seen: {len(seen_ids)}; {waiting.stats}")
    # every connection the waiting executor ever had (CLIENT LIST, by name), and every client
    # its backend made
    assert len(seen_ids) <= 2 and waiting.stats.clients_created <= 2
    assert elapsed < 10  # the waiters' own poll would first look after 10 s

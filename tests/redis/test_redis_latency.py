"""W2-style latency, worker in another process: one-step workflow, dispatch to result, 50 in
a row (after 3 warm-ups), with Redis notifications and without (polling only), both with the
default poll intervals (worker 1 s; waiter 0.1 s growing to 5 s)."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path

import pytest
from stent import Stent
from stent_postgres import SQLiteBackend
from stent_redis import RedisBackend

from . import redis_app
from .worker_process import WorkerProcess

pytestmark = pytest.mark.slow

RUNS = 50
WARM_UPS = 3


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def _w2(tmp_path: Path, redis_url: str | None) -> list[float]:
    label = "redis" if redis_url else "polling"
    db = tmp_path / f"{label}.sqlite"
    backend = SQLiteBackend(db)
    await backend.init_db()
    prefix = f"stent-test-{uuid.uuid4().hex[:12]}"
    worker = WorkerProcess(db, redis_url, prefix, 1.0, tmp_path / f"{label}.log")
    notifications = RedisBackend(redis_url, channel_prefix=prefix) if redis_url else None
    executor = Stent(backend, notification_backend=notifications)
    try:
        await worker.ready()
        latencies = []
        for i in range(-WARM_UPS, RUNS):
            t0 = time.perf_counter()
            eid = await executor.dispatch(redis_app.chain, i, 1)
            result = await asyncio.wait_for(executor.wait_for(eid), 20)
            if i >= 0:
                latencies.append((time.perf_counter() - t0) * 1000)
            assert result.value == i + 1
        return latencies
    finally:
        worker.stop()
        await executor.shutdown()
        await backend.close()


@pytest.mark.timeout(300)
async def test_w2_latency_with_and_without_redis(tmp_path: Path, redis_url: str) -> None:
    with_redis = await _w2(tmp_path, redis_url)
    polling = await _w2(tmp_path, None)
    rows = []
    for label, lat in (("redis", with_redis), ("polling only", polling)):
        rows.append(f"  {label:<13} p50 {percentile(lat, 50):8.1f} ms   "
                    f"p95 {percentile(lat, 95):8.1f} ms   mean {statistics.fmean(lat):8.1f} ms")
    print(f"\nW2 (chain(i, 1), worker in another process, {RUNS} runs):\n" + "\n".join(rows))
    assert percentile(with_redis, 50) < percentile(polling, 50) / 3
    assert percentile(with_redis, 95) < 250

"""Maintenance (SPEC §7): cleanup of finished executions, expired cache entries and old dead
letters by one worker at a time, in batches."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from stent import Result, RetryPolicy, Stent
from stent.backend import Backend
from stent.worker import CLEANUP_BATCH
from stent_testing import FakeClock

from .helpers import start_worker, stop_worker


@Stent.durable
async def quick(i: int) -> int:
    return i


@Stent.durable(cached=True, cache_ttl="1h")
async def cached_value(i: int) -> int:
    return i


@Stent.durable(retry_policy=RetryPolicy(max_attempts=1))
async def always_fails() -> None:
    raise RuntimeError("dead letter me")


def _worker(ex: Stent) -> Any:
    return ex._workers[0]  # the worker serve() started


async def test_cleanup_deletes_old_rows_in_batches_under_one_lease(stent_backend: Backend) -> None:
    clock = FakeClock()
    a = Stent(stent_backend, clock=clock)
    b = Stent(stent_backend, clock=clock)
    wa = await start_worker(a, retention_period=timedelta(days=1), cleanup_interval=3600 * 24 * 30)
    wb = await start_worker(b, retention_period=timedelta(days=1), cleanup_interval=3600 * 24 * 30)
    try:
        ids = [await a.dispatch(quick, i) for i in range(CLEANUP_BATCH + 20)]
        dead = await a.dispatch(always_fails)
        cached = await a.dispatch(cached_value, 1)
        for eid in [*ids, dead, cached]:
            await asyncio.wait_for(a.wait_for(eid), 60)
        await clock.advance("2d")
        calls: list[int | None] = []
        original = stent_backend.cleanup_executions

        async def counting(older_than: Any, limit: int | None = None) -> int:
            calls.append(limit)
            return await original(older_than, limit=limit)

        stent_backend.cleanup_executions = counting  # type: ignore[method-assign]
        first, second = await asyncio.gather(_worker(a).run_cleanup(), _worker(b).run_cleanup())
        stent_backend.cleanup_executions = original  # type: ignore[method-assign]
        done = [r for r in (first, second) if r is not None]
        assert len(done) == 1, "both workers cleaned at once"
        executions, dead_letters, cache_entries = done[0]
        assert executions == len(ids) + 2
        assert dead_letters <= 1  # it may go with its execution, or on its own by age
        assert cache_entries == 1
        assert calls and all(limit == CLEANUP_BATCH for limit in calls)
        assert len(calls) == 2  # one full batch, then the rest
        assert await stent_backend.count_executions() == 0
        assert await a.list_dead_letters() == []
    finally:
        await stop_worker(a, wa)
        await stop_worker(b, wb)


async def test_the_cleanup_lease_passes_on_when_its_holder_is_gone(stent_backend: Backend) -> None:
    clock = FakeClock()
    now = clock.now()
    assert await stent_backend.acquire_maintenance("cleanup", "w1", now + timedelta(minutes=1), now)
    assert not await stent_backend.acquire_maintenance(
        "cleanup", "w2", now + timedelta(minutes=1), now)
    later = now + timedelta(minutes=2)
    assert await stent_backend.acquire_maintenance(
        "cleanup", "w2", later + timedelta(minutes=1), later)


async def test_fresh_rows_and_live_cache_entries_survive_cleanup(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex, retention_period=timedelta(days=7), cleanup_interval=3600 * 24 * 30)
    try:
        eid = await ex.dispatch(cached_value, 2)
        assert await asyncio.wait_for(ex.wait_for(eid), 20) == Result.Ok(2)
        await clock.advance("30m")
        assert await _worker(ex).run_cleanup() == (0, 0, 0)
        assert await ex.result_of(eid) == Result.Ok(2)
    finally:
        await stop_worker(ex, w)

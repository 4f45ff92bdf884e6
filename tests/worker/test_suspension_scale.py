"""Suspension at scale (SPEC §4 "Waiting"): a workflow sleeping 30 days holds no coroutine,
no lease and no slot; 10,000 of them cost a worker nothing beyond their rows."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from stent import Result, Stent
from stent.backend import Backend
from stent_testing import FakeClock

from ..engine.helpers import start_worker, stop_worker


@Stent.durable
async def sleeps_a_month(i: int) -> int:
    await Stent.sleep("30d")
    return i


async def _until(predicate: object, what: str, timeout: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


async def test_ten_thousand_month_long_sleeps_hold_nothing_in_the_worker(
    stent_backend: Backend, stent_backend_kind: str
) -> None:
    n = 1_000 if stent_backend_kind == "postgres" else 10_000
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex, max_concurrency=50, suspend_after=1.0)
    worker = ex._workers[0]
    try:
        ids: list[str] = []
        for start in range(0, n, 500):
            ids += await asyncio.gather(
                *(ex.dispatch(sleeps_a_month, i) for i in range(start, min(n, start + 500))))

        async def all_asleep() -> bool:
            await clock.advance(2)  # past suspend_after: waiting tasks give everything back
            waiting = await stent_backend.count_tasks(state="waiting")
            return waiting == n and not worker.running

        await _until(all_asleep, f"all {n} workflows were suspended")
        assert await stent_backend.count_tasks(state="running") == 0  # no lease held
        assert ex.worker_status_overview()["workers"][0]["active_tasks"] == 0  # no slot
        assert not ex.hub.outstanding()  # nobody in memory waits for their timers
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        await clock.advance("1d")  # a day of idle time with every workflow asleep
        await asyncio.sleep(0.2)
        gc.collect()
        grown = sum(s.size_diff for s in
                    tracemalloc.take_snapshot().compare_to(before, "filename"))
        tracemalloc.stop()
        assert grown < 2_000_000, f"the idle worker grew by {grown} bytes"
        await clock.advance("30d")
        results = [await asyncio.wait_for(ex.wait_for(eid), 300) for eid in ids[:20]]
        assert results == [Result.Ok(i) for i in range(20)]

        async def all_done() -> bool:
            await clock.advance(1)
            return await stent_backend.count_executions(state="completed") == n

        await _until(all_done, f"all {n} workflows woke and completed", timeout=300)
    finally:
        await stop_worker(ex, w)

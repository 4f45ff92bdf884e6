"""Workers correct their clock by its offset from the database's (SPEC §10): a machine whose
clock is two minutes fast neither steals leases nor fires timers early."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from stent import Result, Stent, SystemClock
from stent.backend import Backend

from ..engine.helpers import start_worker, stop_worker

release = {"e": asyncio.Event()}
runs: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    release["e"] = asyncio.Event()
    runs.clear()


class FastClock(SystemClock):
    """A machine whose clock runs two minutes ahead."""

    def raw_time(self) -> float:
        return time.time() + 120.0


@Stent.durable(name="tests.clock.held")
async def held() -> str:
    runs.append("held")
    await release["e"].wait()
    return "done"


@Stent.durable(name="tests.clock.nap")
async def nap() -> str:
    await Stent.sleep(1)
    return "woke"


@pytest.mark.parametrize("stent_backend_kind", ["postgres"])
async def test_a_worker_two_minutes_fast_steals_no_lease(stent_backend: Backend) -> None:
    honest = Stent(stent_backend)
    a = await start_worker(honest, lease_duration=timedelta(seconds=30), poll_interval=0.05)
    eid = await honest.dispatch(held)
    while not runs:
        await asyncio.sleep(0.01)
    fast = Stent(stent_backend, clock=FastClock())
    b = await start_worker(fast, lease_duration=timedelta(seconds=30), poll_interval=0.05)
    assert isinstance(fast.clock, SystemClock)
    assert -121 < fast.clock.offset_s < -119, "the offset from the database was not measured"
    await asyncio.sleep(0.3)  # several polls: without the correction, B sees A's lease expired
    task = await stent_backend.get_task(eid)
    assert task is not None and task.fence == 1 and task.crash_count == 0
    assert runs == ["held"]
    release["e"].set()
    assert await asyncio.wait_for(honest.wait_for(eid), 10) == Result.Ok("done")
    await stop_worker(fast, b)
    await stop_worker(honest, a)


@pytest.mark.parametrize("stent_backend_kind", ["postgres"])
async def test_a_worker_two_minutes_fast_fires_no_timer_early(stent_backend: Backend) -> None:
    honest = Stent(stent_backend)
    lc = honest.create_worker_lifecycle()
    a = await start_worker(honest, lifecycle=lc, poll_interval=0.05)
    started = time.monotonic()
    eid = await honest.dispatch(nap)  # the honest worker writes the one-second timer
    while not any(t.kind == "sleep" for t in await stent_backend.list_tasks_for_execution(eid)):
        await asyncio.sleep(0.01)
    honest.request_worker_drain(lc)  # and leaves: only the fast worker can fire it
    await asyncio.wait_for(a, 10)
    fast = Stent(stent_backend, clock=FastClock())
    b = await start_worker(fast, poll_interval=0.05)
    assert await asyncio.wait_for(fast.wait_for(eid), 10) == Result.Ok("woke")
    assert time.monotonic() - started >= 0.95, "the one-second timer fired early"
    await stop_worker(fast, b)


@pytest.mark.parametrize("stent_backend_kind", ["memory", "sqlite"])
async def test_without_a_database_clock_nothing_is_corrected(stent_backend: Backend) -> None:
    assert not hasattr(stent_backend, "database_time")
    clock = FastClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex, poll_interval=0.05)
    assert clock.offset_s == 0.0
    await stop_worker(ex, w)

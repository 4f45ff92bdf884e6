"""``max_crash_recoveries`` (SPEC §6): a task whose worker keeps dying is dead-lettered as a
poison task after that many take-overs, on every backend, with the fake clock."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from stent import Result, Stent
from stent_testing import CrashPlan

runs: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()


@pytest.fixture
def stent_executor_options() -> dict[str, Any]:
    return {"max_crash_recoveries": 2}


@Stent.durable
async def kills_its_worker() -> None:
    runs["poison"] += 1


@Stent.durable
async def healthy(i: int) -> int:
    return i


@Stent.durable
async def calls_poison() -> str:
    try:
        await kills_its_worker()
    except Exception as exc:
        return f"caught {type(exc).__name__}: {exc}"
    return "no error"


async def test_a_task_that_always_kills_its_worker_is_dead_lettered(
    stent_worker: Stent, crash: CrashPlan
) -> None:
    crash.at("before_step", step=kills_its_worker, times=50)
    before = [await stent_worker.dispatch(healthy, i) for i in range(5)]
    for i, other in enumerate(before):
        assert await asyncio.wait_for(stent_worker.wait_for(other), 30) == Result.Ok(i)
    # (a task running on the same worker when it dies shares that crash in its own count:
    # storage cannot tell the culprit from its neighbours, so they run first here)
    eid = await stent_worker.dispatch(kills_its_worker)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 60)
    assert isinstance(result.error, RuntimeError)
    assert "max_crash_recoveries=2" in str(result.error)
    # the first run and two recoveries died; the third take-over is refused before running
    assert len(crash.crashes) == 3
    dead = await stent_worker.list_dead_letters()
    assert [d.task_id for d in dead] == [eid]
    assert "poison" in dead[0].reason
    after = await stent_worker.dispatch(healthy, 99)  # the workers still serve
    assert await asyncio.wait_for(stent_worker.wait_for(after), 30) == Result.Ok(99)


async def test_a_poison_step_fails_its_caller_where_it_can_be_caught(
    stent_worker: Stent, crash: CrashPlan
) -> None:
    crash.at("before_step", step=kills_its_worker, times=50)
    eid = await stent_worker.dispatch(calls_poison)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 60)
    assert result.ok and "max_crash_recoveries" in str(result.value)


@Stent.durable
async def poison_beside_a_signal_wait() -> str:
    # the poison step starts first (inline on the first run); the signal wait's row is
    # written beside it, so the caller awaits an unfinished step when its worker dies
    got = await asyncio.gather(kills_its_worker(), Stent.wait_for_signal("go"))
    return repr(got)


async def test_a_poison_step_beside_a_written_wait_still_reaches_the_cap(
    stent_worker: Stent, crash: CrashPlan
) -> None:
    # A death during an inline run is charged to nobody while the caller awaits a written
    # step; on replay the step must be written (the history holds the unfinished wait), so
    # that its own deaths count. Without that it ran inline until the crash plan ran out.
    crash.at("before_step", step=kills_its_worker, times=50)
    eid = await stent_worker.dispatch(poison_beside_a_signal_wait)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 60)
    assert not result.ok and "max_crash_recoveries=2" in str(result.error), result
    # at most one uncharged inline death, then the first written run and two recoveries
    assert len(crash.crashes) <= 4, crash.crashes

"""Replay: completed steps are never run again, and diverging code is detected (SPEC §4)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
from stent import NonDeterminismError, Result, Stent
from stent.backend import Backend
from stent.faults import WorkerCrash
from stent_testing import CrashPlan, FakeClock

runs: Counter[str] = Counter()
gate: dict[str, asyncio.Event] = {}
switch = {"divergent": False}


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()
    gate.clear()
    switch["divergent"] = False


@Stent.durable
async def step_a(x: int) -> int:
    runs["a"] += 1
    return x + 1


@Stent.durable
async def step_b(x: int) -> int:
    runs["b"] += 1
    return x * 10


@Stent.durable
async def step_c(x: int) -> int:
    runs["c"] += 1
    return x - 3


@Stent.durable
async def three_steps(x: int) -> int:
    runs["root"] += 1
    a = await step_a(x)
    b = await step_b(a)
    return await step_c(b)


@Stent.durable
async def maybe_divergent(x: int) -> int:
    a = await step_a(x)
    if switch["divergent"]:
        return await step_c(a)
    return await step_b(a)


async def _serve(executor: Stent, **kw: object) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(executor.serve(**kw))  # type: ignore[arg-type]
    await asyncio.wait_for(executor.wait_until_ready(), 10)
    return task


@pytest.mark.parametrize("point", ["before_step", "after_step_result", "after_step_recorded"])
async def test_completed_step_is_not_rerun_after_worker_crash(
    stent_backend: Backend, crash: CrashPlan, point: str
) -> None:
    clock = FakeClock()
    crash.at(point, step=step_b)
    first = Stent(stent_backend, clock=clock)
    w1 = await _serve(first, lease_duration=timedelta(seconds=30), poll_interval=1.0)
    eid = await first.dispatch(three_steps, 1)
    with pytest.raises(WorkerCrash):
        await asyncio.wait_for(w1, 10)
    assert crash.crashes and crash.crashes[0][0] == point
    assert runs["a"] == 1
    # a second worker takes over once the dead worker's leases expire
    second = Stent(stent_backend, clock=clock)
    w2 = await _serve(second, lease_duration=timedelta(seconds=30), poll_interval=1.0)
    await clock.advance(31)
    waiter = asyncio.ensure_future(second.wait_for(eid))
    for _ in range(30):  # more polls, if a loaded machine ran the take-over late
        if waiter.done():
            break
        await clock.advance(1)
    result = await asyncio.wait_for(waiter, 10)
    assert result == Result.Ok(17)
    assert runs["a"] == 1, "a completed step ran again"
    expected_b = 1 if point == "before_step" else 2  # b's body had run before the crash
    if point == "after_step_recorded":
        expected_b = 1  # its result was stored: it is replayed, not run again
    assert runs["b"] == expected_b
    assert runs["c"] == 1
    root = await stent_backend.get_task(eid)
    assert root is not None and root.crash_count == 1
    w2.cancel()
    await second.shutdown()


async def test_mismatched_replay_raises_non_determinism_error_and_fails_without_retry(
    stent_backend: Backend, crash: CrashPlan
) -> None:
    clock = FakeClock()
    crash.at("after_step_recorded", step=step_b)  # b is recorded; the caller has not resumed
    first = Stent(stent_backend, clock=clock)
    w1 = await _serve(first, poll_interval=1.0)
    eid = await first.dispatch(maybe_divergent, 1)
    with pytest.raises(WorkerCrash):
        await asyncio.wait_for(w1, 10)
    switch["divergent"] = True  # the code changed while the execution was in flight
    second = Stent(stent_backend, clock=clock)
    w2 = await _serve(second, poll_interval=1.0)
    await clock.advance(timedelta(minutes=5, seconds=1))
    result = await asyncio.wait_for(second.wait_for(eid), 10)
    assert not result.ok
    assert isinstance(result.error, NonDeterminismError)
    assert step_b.name in str(result.error) and step_c.name in str(result.error)
    root = await stent_backend.get_task(eid)
    assert root is not None and root.retries == 0
    letters = await second.list_dead_letters()
    assert [d.reason for d in letters] == ["non-determinism on replay"]
    w2.cancel()
    await second.shutdown()

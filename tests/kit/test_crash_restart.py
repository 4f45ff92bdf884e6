"""Restarting after a crash: automatically under ``stent_worker``, or by hand with
``crash.restart()``; and random crashes that still end with the right result."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from stent import Result, Stent
from stent_testing import CrashPlan, FakeClock

from .workflows import ORDER_RESULT, charge, order, reserve, ship


@pytest.fixture
def stent_worker_options() -> dict[str, Any]:
    return {"lease_duration": "30s", "suspend_after": 120}


async def test_a_dead_worker_stays_dead_without_auto_restart(
    stent_worker: Stent, crash: CrashPlan
) -> None:
    crash.auto_restart = False
    crash.at("before_step", step=charge)
    eid = await stent_worker.dispatch(order, "o-1")
    for _ in range(1000):  # the crash comes after ten minutes of fake time: wait for it
        if crash.crashes:
            break
        await asyncio.sleep(0.01)
    assert crash.crashes, "the injected crash never happened"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stent_worker.wait_for(eid), 0.3)
    assert crash.supervisor is not None and not crash.supervisor.alive


async def test_restart_brings_a_new_worker_that_finishes_the_workflow(
    stent_worker: Stent, crash: CrashPlan
) -> None:
    crash.auto_restart = False
    crash.at("before_step", step=charge)
    eid = await stent_worker.dispatch(order, "o-1")
    while not crash.crashes:
        await asyncio.sleep(0.01)
    await crash.restart()
    assert await asyncio.wait_for(stent_worker.wait_for(eid), 10) == Result.Ok(ORDER_RESULT)
    assert crash.body_runs[charge.name] == 1


async def test_restart_moves_a_hand_driven_clock_past_the_lease(
    stent_worker: Stent, crash: CrashPlan, fake_clock: FakeClock
) -> None:
    fake_clock.auto_advance = False
    crash.at("after_step_result", step=reserve)
    eid = await stent_worker.dispatch(order, "o-1")
    while not crash.crashes:
        await asyncio.sleep(0.01)
    before = fake_clock.now()
    await crash.restart()
    assert (fake_clock.now() - before).total_seconds() > 30
    await fake_clock.advance("10m")
    assert await asyncio.wait_for(stent_worker.wait_for(eid), 10) == Result.Ok(ORDER_RESULT)
    assert crash.body_runs[reserve.name] == 2


async def test_restart_of_a_live_worker_kills_it_first(
    stent_worker: Stent, crash: CrashPlan
) -> None:
    assert crash.supervisor is not None
    first = crash.supervisor.current
    await crash.restart()
    assert crash.supervisor.deaths == 1
    assert crash.supervisor.current is not first
    eid = await stent_worker.dispatch(order, "o-2")
    assert (await asyncio.wait_for(stent_worker.wait_for(eid), 10)).ok


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_random_crashes_still_give_the_right_result_without_rerunning_recorded_steps(
    stent_worker: Stent, crash: CrashPlan, seed: int
) -> None:
    crash.random(seed, 0.25, limit=6)
    eid = await stent_worker.dispatch(order, "o-1")
    assert await asyncio.wait_for(stent_worker.wait_for(eid), 30) == Result.Ok(ORDER_RESULT)
    assert crash.reruns_after_record == []
    lost = {name: sum(1 for p, info in crash.crashes
                      if p == "after_step_result" and info.get("step") == name)
            for name in (reserve.name, charge.name, ship.name)}
    for name, results_lost in lost.items():
        assert crash.body_runs[name] == 1 + results_lost, name


async def test_random_crashes_land_on_the_same_points_for_the_same_seed(
    stent_worker: Stent, crash: CrashPlan
) -> None:
    steps_only = ["before_step", "after_step_result", "after_step_recorded"]

    async def run(order_id: str) -> list[tuple[str, Any]]:
        crash.crashes.clear()
        crash.random(11, 0.4, points=steps_only, limit=4)
        eid = await stent_worker.dispatch(order, order_id)
        assert (await asyncio.wait_for(stent_worker.wait_for(eid), 30)).ok
        return [(p, info.get("step")) for p, info in crash.crashes]

    first = await run("o-1")
    assert first, "seed 11 crashes at least once"
    assert await run("o-1b") == first

"""Neighbours of a poison task are not dead-lettered with it (SPEC §6): a worker death is
charged to every task working on that worker, but a task charged once (a suspect) runs its
own code only where nothing else runs, so every later charge is a death it caused. With
``max_crash_recoveries=1`` a single shared death is all a neighbour can take: it must still
complete, on every backend, however often the poison task kills the worker they share."""

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
    return {"max_crash_recoveries": 1}


@Stent.durable
async def kills_its_worker() -> None:
    runs["poison"] += 1


@Stent.durable
async def poison_flow() -> None:
    await asyncio.sleep(0.01)
    await kills_its_worker()


@Stent.durable
async def slow_step(i: int) -> int:
    runs["slow_step"] += 1
    await asyncio.sleep(0.02)
    return i


@Stent.durable
async def busy_flow(i: int) -> int:
    total = 0
    for k in range(4):
        await asyncio.sleep(0.005)  # its own code, between steps
        total += await slow_step(i + k)
    return total


@Stent.durable
async def fan_flow(i: int) -> int:
    parts = await asyncio.gather(*(slow_step(i * 10 + k) for k in range(3)))
    await asyncio.sleep(0.005)
    return sum(parts) + await slow_step(0)


async def test_workflows_beside_a_poison_task_all_complete(
    stent_worker: Stent, crash: CrashPlan
) -> None:
    crash.at("before_step", step=kills_its_worker, times=50)
    eids: list[tuple[str, int]] = []
    poison: list[str] = []
    for i in range(12):
        eids.append((await stent_worker.dispatch(busy_flow, i), 4 * i + 6))
        eids.append((await stent_worker.dispatch(fan_flow, i), 30 * i + 3))
        if i in (0, 5):
            poison.append(await stent_worker.dispatch(poison_flow))
    results = await asyncio.wait_for(
        asyncio.gather(*(stent_worker.wait_for(e) for e, _ in eids)), 120)
    assert results == [Result.Ok(expected) for _, expected in eids]
    for eid in poison:
        result = await asyncio.wait_for(stent_worker.wait_for(eid), 60)
        assert not result.ok and "max_crash_recoveries=1" in str(result.error)
    dead = await stent_worker.list_dead_letters(limit=100)
    assert {d.execution_id for d in dead} == set(poison), dead
    assert {d.step_name for d in dead} <= {poison_flow.name, kills_its_worker.name}
    # each poison step died at its first run and at one run alone; both charged
    assert len(crash.crashes) >= 2 * len(poison)
    for d in dead:
        if d.step_name == kills_its_worker.name:
            task = await stent_worker.backend.get_task(d.task_id)
            assert task is not None and task.crash_count == 2

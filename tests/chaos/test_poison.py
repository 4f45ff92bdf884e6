"""Poison tasks beside healthy work: a step that SIGKILLs its own worker every time it runs
ends in the dead-letter queue after max_crash_recoveries, and a task whose stored arguments
no longer decode is dead-lettered at once; 100 normal workflows beside them complete."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from stent import Result, Stent

from . import app
from .fleet import Fleet
from .ledger import read_ledger
from .oracle import check, write_result
from .probe import open_probe

RECOVERIES = 3
WORKERS = 3


@pytest.mark.timeout(180)
async def test_poison_tasks_are_dead_lettered_while_normal_work_completes(
    stent_backend: Any, tmp_path: Path, chaos_seed: int
) -> None:
    rng = random.Random(chaos_seed)
    fleet = Fleet(stent_backend, tmp_path, lease=2.0,
                  max_crash_recoveries=RECOVERIES)
    probe = await open_probe(stent_backend)
    ex = Stent(stent_backend)
    keeper = None
    try:
        killer = await ex.dispatch(app.poison_flow, "poison")
        garbled = await ex.dispatch(app.step, "garbled", 0)
        # what json.loads cannot read, in a well-formed frame (4-byte length, then the args)
        await probe.corrupt_args(garbled, (6).to_bytes(4, "big") + b"\xff\xfe{not")
        normal = [await ex.dispatch(app.workflow, wf, 5, 3, round(rng.uniform(0.2, 1.0), 3),
                                    rng.randint(20, 100)) for wf in range(100)]
        keeper = asyncio.create_task(fleet.keep_alive(WORKERS))
        results = await asyncio.wait_for(
            asyncio.gather(*(ex.wait_for(i) for i in [killer, garbled, *normal])), 150)
    finally:
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        fleet.close()
        await probe.close()
        await ex.shutdown()

    report = await check(stent_backend, fleet.ledger_dir, completed=normal,
                         dead=[killer, garbled], deaths=fleet.deaths)
    letters = {d.execution_id: d for d in await ex.list_dead_letters(limit=100)}
    poison_runs = [r for r in read_ledger(fleet.ledger_dir).runs if r.key == "poison"]
    result = {
        "seed": chaos_seed,
        "workers_started": fleet.started,
        "poison_body_runs": len(poison_runs),
        "dead_letters": {e: [d.step_name, d.reason] for e, d in letters.items()},
        "oracle": report,
    }
    write_result(result, tmp_path / "result.json")
    assert letters[killer].reason.startswith("poison task"), result
    assert letters[garbled].reason.startswith("undecodable arguments"), result
    assert not results[0].ok and not results[1].ok
    # The dead-lettered task (the poison step, or its workflow when the step ran inline on
    # the workflow's lease) was taken over RECOVERIES times, and the next claim found it over
    # the limit: at least 1 + RECOVERIES runs of the poison step, each of which killed a worker.
    dead_task = await stent_backend.get_task(letters[killer].task_id)
    assert dead_task is not None and dead_task.crash_count == RECOVERIES + 1, result
    assert len(poison_runs) >= 1 + RECOVERIES, result
    assert fleet.started == WORKERS + len(poison_runs), result
    assert report["ok"], result
    assert results[2:] == [Result.Ok(8)] * 100
    assert set(letters) == {killer, garbled}, result


@pytest.mark.timeout(120)
async def test_a_poison_task_does_not_dead_letter_the_workflows_beside_it(
    stent_backend: Any, tmp_path: Path, chaos_seed: int
) -> None:
    # One worker process (restarted after each crash): every workflow in flight shares it
    # with the poison task at every crash. They sleep through all the crashes.
    fleet = Fleet(stent_backend, tmp_path, lease=2.0,
                  max_crash_recoveries=RECOVERIES)
    ex = Stent(stent_backend)
    keeper = None
    try:
        killer = await ex.dispatch(app.poison_flow, "poison")
        beside = [await ex.dispatch(app.workflow, wf, 2, 0, 20.0, 10) for wf in range(4)]
        keeper = asyncio.create_task(fleet.keep_alive(1))
        results = await asyncio.wait_for(
            asyncio.gather(*(ex.wait_for(i) for i in [killer, *beside])), 90)
    finally:
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        fleet.close()
        await ex.shutdown()
    report = await check(stent_backend, fleet.ledger_dir, completed=beside, dead=[killer],
                         deaths=fleet.deaths)
    write_result({"seed": chaos_seed, "workers_started": fleet.started, "oracle": report},
                 tmp_path / "result.json")
    assert results[1:] == [Result.Ok(2)] * 4, report["problems"]
    assert report["ok"], report


@pytest.mark.timeout(120)
async def test_a_failed_workflow_leaves_no_task_unfinished(
    stent_backend: Any, tmp_path: Path, chaos_seed: int
) -> None:
    fleet = Fleet(stent_backend, tmp_path, lease=2.0, max_crash_recoveries=RECOVERIES)
    ex = Stent(stent_backend)
    keeper = asyncio.create_task(fleet.keep_alive(1))
    try:
        eid = await ex.dispatch(app.poison_sleeper, "poison")
        result = await ex.wait_for(eid, expiry=90)
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        fleet.close()
        await ex.shutdown()
    report = await check(stent_backend, fleet.ledger_dir, completed=[], dead=[eid],
                         deaths=fleet.deaths)
    write_result({"seed": chaos_seed, "oracle": report}, tmp_path / "result.json")
    assert not result.ok
    assert report["ok"], report
    # The poison step is written, not run inline, while its caller awaits the sleep's row:
    # every death is charged to it, so it is dead-lettered after its first run and
    # RECOVERIES runs alone (an inline run would be charged to nobody, and repeat).
    assert report["body_runs"] == 1 + RECOVERIES, report

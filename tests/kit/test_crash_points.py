"""Every crash point of SPEC §11, on every backend: the worker dies there, a fresh worker takes
over, and the workflow finishes by replay with the right result and no recorded step run
twice."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from stent import Result, Stent
from stent_testing import CrashPlan

from .workflows import ORDER_RESULT, charge, order, reserve, ship


@pytest.fixture
def stent_worker_options() -> dict[str, Any]:
    # A 30 s lease heartbeats every 10 s, so the workflow's ten-minute pause (during which
    # the waiting workflow stays in memory for suspend_after) passes heartbeats.
    return {"lease_duration": "30s", "suspend_after": 120}


def _arrange(crash: CrashPlan, point: str) -> None:
    """Crash once at ``point``, at the moment that matters for the order workflow."""
    if point in ("before_step", "after_step_started", "after_step_result",
                 "after_step_recorded"):
        crash.at(point, step=charge)
    else:  # not passed for a step: arm it once the first step is done, mid-workflow
        crash.at(point, after=reserve)


async def _run_order(executor: Stent) -> Result[Any]:
    eid = await executor.dispatch(order, "o-1")
    return await asyncio.wait_for(executor.wait_for(eid), 20)


@pytest.mark.parametrize("point", [
    "before_step", "after_step_started", "after_step_result", "after_step_recorded",
    "during_heartbeat", "before_claim", "before_claim_commit",
])
async def test_workflow_finishes_with_the_right_result_after_a_crash_at_each_point(
    stent_worker: Stent, crash: CrashPlan, point: str
) -> None:
    _arrange(crash, point)
    result = await _run_order(stent_worker)
    assert [p for p, _ in crash.crashes] == [point], "the scenario must reach the point"
    assert result == Result.Ok(ORDER_RESULT)


@pytest.mark.parametrize("point", [
    "before_step", "after_step_started", "after_step_recorded",
    "during_heartbeat", "before_claim", "before_claim_commit",
])
async def test_no_step_body_runs_twice_after_a_crash_outside_its_body(
    stent_worker: Stent, crash: CrashPlan, point: str
) -> None:
    _arrange(crash, point)
    await _run_order(stent_worker)
    assert [p for p, _ in crash.crashes] == [point]
    assert crash.body_runs[reserve.name] == 1
    assert crash.body_runs[charge.name] == 1
    assert crash.body_runs[ship.name] == 1
    assert crash.reruns_after_record == []


async def test_a_step_whose_result_was_lost_runs_again_but_no_recorded_step_does(
    stent_worker: Stent, crash: CrashPlan
) -> None:
    """``after_step_result``: charge's body returned but its result was never stored, so it
    runs again (at least once delivery); the steps recorded before it do not."""
    _arrange(crash, "after_step_result")
    await _run_order(stent_worker)
    assert crash.body_runs[charge.name] == 2
    assert crash.body_runs[reserve.name] == 1
    assert crash.body_runs[ship.name] == 1
    assert crash.reruns_after_record == []


@pytest.mark.parametrize("point", [
    "before_step", "after_step_started", "after_step_result", "after_step_recorded",
    "during_heartbeat", "before_claim", "before_claim_commit",
])
async def test_a_fresh_worker_replaces_the_one_that_died(
    stent_worker: Stent, crash: CrashPlan, point: str
) -> None:
    _arrange(crash, point)
    await _run_order(stent_worker)
    assert crash.supervisor is not None
    assert crash.supervisor.deaths == 1
    assert len(crash.supervisor.executors) == 2
    assert crash.supervisor.current is not stent_worker, "a new Stent: no in-memory state"

"""``auto_advance``: a workflow that sleeps 30 days and retries with minute-long backoffs
finishes in well under a second of real time (SPEC §11)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from stent import Result, Stent
from stent_testing import CrashPlan, FakeClock

from . import workflows
from .workflows import bill_after_trial, trial


@pytest.fixture(autouse=True)
def _two_billing_failures() -> None:
    workflows.flaky_failures["left"] = 2


async def test_thirty_day_sleep_with_retries_finishes_in_well_under_a_second(
    stent_worker: Stent, fake_clock: FakeClock, crash: CrashPlan,
    record_property: pytest.RecordProperty,
) -> None:
    began = fake_clock.now()
    t0 = time.perf_counter()
    eid = await stent_worker.dispatch(trial, "acct-1")
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 10)
    elapsed = time.perf_counter() - t0
    record_property("real_seconds", round(elapsed, 4))
    print(f"30-day sleep + 2 retries (60 s, 120 s backoff): {elapsed * 1000:.0f} ms real time")
    assert result == Result.Ok("invoice-acct-1")
    assert crash.body_runs[bill_after_trial.name] == 3, "two failures, then a success"
    assert fake_clock.now() - began >= timedelta(days=30, seconds=180)
    assert elapsed < 1.0


async def test_retries_wait_their_backoff_on_the_fake_clock(
    stent_worker: Stent, fake_clock: FakeClock
) -> None:
    began = fake_clock.now()
    eid = await stent_worker.dispatch(bill_after_trial, "acct-1")
    assert await asyncio.wait_for(stent_worker.wait_for(eid), 10) == Result.Ok("invoice-acct-1")
    state = await stent_worker.state_of(eid)
    assert state.finished_at is not None
    waited = state.finished_at - began
    assert timedelta(seconds=180) <= waited < timedelta(seconds=190), "60 s, then 120 s"

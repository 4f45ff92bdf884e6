"""Fencing: a worker that lost its lease cannot change anything (SPEC §4 "Delivery")."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import timedelta

import pytest
from stent import Result, Stent
from stent.backend import Backend
from stent_testing import FakeClock

from .helpers import start_worker, stop_worker

runs: Counter[str] = Counter()
release = {"event": asyncio.Event()}


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()
    release["event"] = asyncio.Event()


@Stent.durable
async def slow_charge(x: int) -> int:
    runs["slow_charge"] += 1
    await release["event"].wait()
    return x * 100


@Stent.durable(max_concurrent=1000)  # capped: written and claimed through storage
async def slow_charge_stored(x: int) -> int:
    runs["slow_charge"] += 1
    await release["event"].wait()
    return x * 100


@Stent.durable
async def checkout(x: int) -> int:
    runs["checkout"] += 1
    return await slow_charge_stored(x) + 1


@Stent.durable
async def checkout_inline(x: int) -> int:
    runs["checkout"] += 1
    return await slow_charge(x) + 1


async def test_completion_from_a_worker_whose_lease_expired_changes_nothing(
    stent_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    # worker A never renews its leases (heartbeat far beyond the lease): a stalled process
    stale = Stent(stent_backend, clock=clock)
    a = await start_worker(stale, lease_duration=timedelta(seconds=10),
                           heartbeat_interval=timedelta(hours=1), suspend_after=3600,
                           poll_interval=3600)
    eid = await stale.dispatch(checkout, 7)
    await clock.advance(0)
    assert runs["slow_charge"] == 1
    [_root, child] = await stent_backend.list_tasks_for_execution(eid)
    assert (child.state, child.fence, child.worker_id) == ("running", 1, a_id := child.worker_id)

    await clock.advance(11)  # both leases expire; worker B takes the tasks over
    fresh = Stent(stent_backend, clock=clock)
    b = await start_worker(fresh, lease_duration=timedelta(minutes=5))
    await clock.advance(0)
    assert runs["slow_charge"] == 2
    child_now = await stent_backend.get_task(child.id)
    assert child_now is not None and child_now.fence == 2 and child_now.worker_id != a_id

    with caplog.at_level(logging.WARNING, logger="stent"):
        release["event"].set()  # both bodies return now; only B's fence is current
        # (the root may be finished by either worker: B gave it back while its suspect
        # child ran alone; the waiter then learns of it from its poll)
        waiter = asyncio.ensure_future(fresh.wait_for(eid))
        for _ in range(60):
            if waiter.done():
                break
            await clock.advance(1)
        result = await asyncio.wait_for(waiter, 10)
        await clock.advance(1)  # let A's hub poll find the child and A's root try to finish
    assert result == Result.Ok(701)
    final = await stent_backend.get_task(child.id)
    assert final is not None and final.state == "completed" and final.fence == 2
    stale_writes = [r for r in caplog.records if "stale lease" in r.getMessage()]
    assert stale_writes, "worker A's completion should have been rejected by the fence"
    assert (await fresh.result_of(eid)) == Result.Ok(701)
    await stop_worker(stale, a)
    await stop_worker(fresh, b)


async def test_operator_reset_of_a_running_task_fences_out_its_worker(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex, lease_duration=timedelta(minutes=5))
    eid = await ex.dispatch(checkout, 1)
    await clock.advance(0)
    tasks = await stent_backend.list_tasks_for_execution(eid)
    child = next(t for t in tasks if t.parent_id == eid)
    # the deployment guide's manual reclaim
    task = await stent_backend.get_task(child.id)
    assert task is not None
    task.state = "pending"
    task.worker_id = None
    await stent_backend.update_task(task)
    await clock.advance(1.5)  # the claim loop polls and re-claims it (fence 3)
    release["event"].set()
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok(101)
    assert runs["slow_charge"] == 2
    final = await stent_backend.get_task(child.id)
    assert final is not None and final.fence == 3
    await stop_worker(ex, w)


async def test_inline_step_finished_by_a_worker_that_lost_its_callers_lease_is_discarded(
    stent_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """An inline step (run before it is written) rides on its caller's lease: once that
    lease is gone, its write is rejected and the new owner's run is the one recorded."""
    clock = FakeClock()
    stale = Stent(stent_backend, clock=clock)
    a = await start_worker(stale, lease_duration=timedelta(seconds=10),
                           heartbeat_interval=timedelta(hours=1), suspend_after=3600,
                           poll_interval=3600)
    eid = await stale.dispatch(checkout_inline, 7)
    await clock.advance(0)
    assert runs["slow_charge"] == 1
    assert len(await stent_backend.list_tasks_for_execution(eid)) == 1, "not written yet"
    await clock.advance(11)
    fresh = Stent(stent_backend, clock=clock)
    b = await start_worker(fresh, lease_duration=timedelta(minutes=5))
    await clock.advance(0)
    assert runs["slow_charge"] == 2
    with caplog.at_level(logging.WARNING, logger="stent"):
        release["event"].set()
        result = await asyncio.wait_for(fresh.wait_for(eid), 10)
        await clock.advance(1)
    assert result == Result.Ok(701)
    kids = [t for t in await stent_backend.list_tasks_for_execution(eid) if t.parent_id]
    assert [(k.state, k.result is not None) for k in kids] == [("completed", True)]
    assert any("stale lease" in r.getMessage() for r in caplog.records)
    await stop_worker(stale, a)
    await stop_worker(fresh, b)

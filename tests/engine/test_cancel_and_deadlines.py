"""Cancellation and execution time limits (SPEC §8)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
from stent import (
    ExecutionCancelledError,
    ExecutionNotFound,
    ExecutionTimeoutError,
    Result,
    Stent,
)
from stent.backend import Backend
from stent_testing import FakeClock

from .helpers import start_worker, stop_worker

runs: Counter[str] = Counter()
seen_cancel: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()
    seen_cancel.clear()


@Stent.durable(name="tests.cancel.long_step")
async def long_step() -> str:
    runs["long_step"] += 1
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        seen_cancel.append("long_step")
        raise
    return "never"


@Stent.durable(name="tests.cancel.workflow")
async def workflow() -> str:
    runs["workflow"] += 1
    return await long_step()


@Stent.durable(name="tests.cancel.sleeper")
async def sleeper() -> str:
    await Stent.sleep("1h")
    runs["after_sleep"] += 1
    return "woke"


@Stent.durable(name="tests.cancel.quick")
async def quick() -> str:
    return "done"


async def _until(predicate: object, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_cancel_stops_running_steps_and_ends_cancelled(stent_backend: Backend) -> None:
    ex = Stent(stent_backend)
    w = await start_worker(ex, poll_interval=0.05)
    eid = await ex.dispatch(workflow)
    await _until(lambda: runs["long_step"] == 1)
    assert await ex.cancel(eid) in ("cancelling", "cancelled")
    result = await asyncio.wait_for(ex.wait_for(eid), 10)
    assert isinstance(result.error, ExecutionCancelledError)
    assert seen_cancel == ["long_step"], "the running step did not receive CancelledError"
    state = await ex.state_of(eid)
    assert state.state == "cancelled"
    assert all(t.state == "cancelled" for t in await stent_backend.list_tasks_for_execution(eid))
    await stop_worker(ex, w)


async def test_cancel_of_a_pending_execution_and_of_a_finished_one(stent_backend: Backend) -> None:
    ex = Stent(stent_backend)
    eid = await ex.dispatch(quick)
    assert await ex.cancel(eid) == "cancelled"
    assert isinstance((await ex.wait_for(eid)).error, ExecutionCancelledError)
    w = await start_worker(ex, poll_interval=0.05)
    done = await ex.dispatch(quick)
    assert await asyncio.wait_for(ex.wait_for(done), 10) == Result.Ok("done")
    assert await ex.cancel(done) == "completed"  # a no-op
    assert await ex.result_of(done) == Result.Ok("done")
    assert await ex.result_of(eid) != Result.Ok("done")
    with pytest.raises(ExecutionNotFound):
        await ex.cancel("no-such-execution")
    await stop_worker(ex, w)


async def test_cancel_reaches_a_task_on_another_worker_at_its_heartbeat(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    worker_side = Stent(stent_backend, clock=clock)
    w = await start_worker(worker_side, lease_duration=timedelta(seconds=30))
    caller = Stent(stent_backend, clock=clock)  # another process: no worker of its own
    eid = await caller.dispatch(workflow)
    await clock.advance(1.5)  # the worker's next poll finds it
    assert runs["long_step"] == 1
    assert await caller.cancel(eid) == "cancelling"
    await clock.advance(11)  # the worker's next heartbeat learns of it
    assert seen_cancel == ["long_step"]
    result = await asyncio.wait_for(caller.wait_for(eid), 10)
    assert isinstance(result.error, ExecutionCancelledError)
    await stop_worker(worker_side, w)


async def test_a_suspended_workflow_is_cancelled_without_running_again(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex, suspend_after=60)
    eid = await ex.dispatch(sleeper)
    await clock.advance(61)
    root = await stent_backend.get_task(eid)
    assert root is not None and root.state == "waiting"
    assert await ex.cancel(eid) == "cancelled"
    await clock.advance(timedelta(hours=2))
    assert runs["after_sleep"] == 0
    assert isinstance((await ex.wait_for(eid)).error, ExecutionCancelledError)
    await stop_worker(ex, w)


async def test_max_duration_times_out_the_execution_and_cancels_its_steps(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex)
    eid = await ex.dispatch(workflow, max_duration="10m")
    await clock.advance(0)
    assert runs["long_step"] == 1
    await clock.advance(timedelta(minutes=9, seconds=58))
    assert (await ex.state_of(eid)).state == "running"
    await clock.advance(3)
    result = await asyncio.wait_for(ex.wait_for(eid), 10)
    assert isinstance(result.error, ExecutionTimeoutError)
    assert seen_cancel == ["long_step"]
    state = await ex.state_of(eid)
    assert state.state == "timed_out" and isinstance(state.error, ExecutionTimeoutError)
    await stop_worker(ex, w)


async def test_expiry_is_a_synonym_of_max_duration_and_counts_from_the_delay(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex)
    eid = await ex.dispatch(sleeper, expiry="30m", delay="1h")
    await clock.advance(timedelta(hours=1, minutes=29))
    assert (await ex.state_of(eid)).state == "running"
    await clock.advance(timedelta(minutes=2))
    assert (await ex.state_of(eid)).state == "timed_out"
    assert runs["after_sleep"] == 0
    await stop_worker(ex, w)


async def test_a_workflow_mode_call_raises_the_cancellation(stent_worker: Stent) -> None:
    task = asyncio.ensure_future(workflow())
    await _until(lambda: runs["long_step"] == 1)
    [execution] = await stent_worker.list_executions(state="running")
    await stent_worker.cancel(execution.id)
    with pytest.raises(ExecutionCancelledError):
        await asyncio.wait_for(task, 10)

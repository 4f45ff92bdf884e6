"""Signals (SPEC §9): a FIFO per (execution, name), buffered before a wait, never lost or
delivered twice, with timeouts, on every backend and the fake clock."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from stent import (
    ExecutionNotFound,
    NotInExecutionContext,
    PayloadTooLargeError,
    Result,
    SerializationError,
    SignalTimeoutError,
    Stent,
)
from stent.backend import Backend
from stent_testing import FakeClock

from .helpers import start_worker, stop_worker

runs: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()


@Stent.durable
async def approval() -> Any:
    runs["approval"] += 1
    return await Stent.wait_for_signal("approve")


@Stent.durable
async def three_in_a_row() -> list[Any]:
    return [await Stent.wait_for_signal("item") for _ in range(3)]


@Stent.durable
async def sleeps_then_collects(n: int) -> list[Any]:
    await Stent.sleep("1h")
    return [await Stent.wait_for_signal("item") for _ in range(n)]


@Stent.durable
async def two_names() -> tuple[Any, Any]:
    first = await Stent.wait_for_signal("b")
    second = await Stent.wait_for_signal("a")
    return first, second


@Stent.durable
async def waits_with_timeout() -> str:
    try:
        got = await Stent.wait_for_signal("go", timeout="10m")
    except SignalTimeoutError as exc:
        return f"timed out: {exc}"
    return f"got {got}"


@Stent.durable
async def times_out_uncaught() -> None:
    await Stent.wait_for_signal("never", timeout=5)


@Stent.durable
async def timeout_then_wait_again() -> Any:
    try:
        await Stent.wait_for_signal("late", timeout="1m")
    except SignalTimeoutError:
        runs["timed_out"] += 1
    return await Stent.wait_for_signal("late")


@Stent.durable
async def step_before_signal() -> Any:
    await counted_step()
    payload = await Stent.wait_for_signal("resume")
    await counted_step()
    return payload


@Stent.durable
async def counted_step() -> None:
    runs["step"] += 1


async def _wait(ex: Stent, eid: str) -> Result[Any]:
    return await asyncio.wait_for(ex.wait_for(eid), 20)


async def _until_waiting(ex: Stent, eid: str, steps: int = 1) -> None:
    """Until the execution's signal wait exists in storage."""
    for _ in range(400):
        tasks = await ex.backend.list_tasks_for_execution(eid)
        if sum(1 for t in tasks if t.kind == "signal") >= steps:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the workflow never started waiting for its signal")


async def test_a_signal_resumes_a_waiting_workflow_with_its_payload(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(approval)
    await _until_waiting(stent_worker, eid)
    await stent_worker.send_signal(eid, "approve", {"by": "ops", "ok": True})
    assert await _wait(stent_worker, eid) == Result.Ok({"by": "ops", "ok": True})
    assert runs["approval"] >= 1


async def test_signals_sent_before_any_wait_are_kept_in_order(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(sleeps_then_collects, 3)
    for payload in ("first", "second", "third"):
        await stent_worker.send_signal(eid, "item", payload)
    assert await _wait(stent_worker, eid) == Result.Ok(["first", "second", "third"])


async def test_many_waits_of_one_name_consume_one_signal_each(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(three_in_a_row)
    for i in range(3):
        await _until_waiting(stent_worker, eid, steps=i + 1)
        await stent_worker.send_signal(eid, "item", i)
    assert await _wait(stent_worker, eid) == Result.Ok([0, 1, 2])


async def test_an_extra_signal_stays_queued_and_is_never_delivered_twice(
    stent_worker: Stent,
) -> None:
    eid = await stent_worker.dispatch(sleeps_then_collects, 2)
    for payload in ("a", "b", "c"):
        await stent_worker.send_signal(eid, "item", payload)
    assert await _wait(stent_worker, eid) == Result.Ok(["a", "b"])
    tasks = await stent_worker.backend.list_tasks_for_execution(eid)
    assert sum(1 for t in tasks if t.kind == "signal") == 2


async def test_queues_of_different_names_are_independent(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(two_names)
    await stent_worker.send_signal(eid, "a", "for a")
    await stent_worker.send_signal(eid, "b", "for b")
    assert await _wait(stent_worker, eid) == Result.Ok(("for b", "for a"))


async def test_a_signal_timeout_raises_signal_timeout_error_in_the_workflow(
    stent_worker: Stent,
) -> None:
    result = await _wait(stent_worker, await stent_worker.dispatch(waits_with_timeout))
    assert result.ok and str(result.value).startswith("timed out")
    assert "go" in str(result.value)


async def test_a_signal_before_the_timeout_wins(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex)
    try:
        eid = await ex.dispatch(waits_with_timeout)
        await _until_waiting(ex, eid)
        await clock.advance("9m")
        await ex.send_signal(eid, "go", 7)
        assert await _wait(ex, eid) == Result.Ok("got 7")
        await clock.advance("5m")  # the timer's due time passes: nothing changes
        assert await ex.result_of(eid) == Result.Ok("got 7")
    finally:
        await stop_worker(ex, w)


async def test_an_uncaught_signal_timeout_fails_the_execution(stent_worker: Stent) -> None:
    result = await _wait(stent_worker, await stent_worker.dispatch(times_out_uncaught))
    assert isinstance(result.error, SignalTimeoutError)


async def test_a_signal_after_a_timeout_goes_to_the_next_wait(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex)
    try:
        eid = await ex.dispatch(timeout_then_wait_again)
        await _until_waiting(ex, eid)
        await clock.advance("61s")
        await _until_waiting(ex, eid, steps=2)
        await ex.send_signal(eid, "late", "second wait")
        assert await _wait(ex, eid) == Result.Ok("second wait")
        assert runs["timed_out"] == 1
    finally:
        await stop_worker(ex, w)


async def test_a_signal_landing_between_the_wait_insert_and_the_await_is_not_lost(
    stent_backend: Backend,
) -> None:
    """The window a lost wake-up would need: the wait's row is committed (no signal was
    buffered), and the signal is delivered before the waiter's coroutine resumes."""
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    original = stent_backend.create_signal_wait
    delivered: list[str] = []

    async def racing(parent_id: str, fence: int, new: Any, name: str, now: Any) -> Any:
        row = await original(parent_id, fence, new, name, now)
        assert row[0].state == "waiting"  # nothing was buffered at the check
        await ex.send_signal(row[0].execution_id, name, "raced")
        delivered.append(row[0].id)
        return row

    stent_backend.create_signal_wait = racing  # type: ignore[method-assign]
    w = await start_worker(ex)
    try:
        eid = await ex.dispatch(approval)
        assert await asyncio.wait_for(ex.wait_for(eid), 5) == Result.Ok("raced")
        assert len(delivered) == 1
    finally:
        stent_backend.create_signal_wait = original  # type: ignore[method-assign]
        await stop_worker(ex, w)


async def test_a_signal_from_another_process_reaches_a_waiter_without_notifications(
    stent_backend: Backend,
) -> None:
    """Storage-only delivery (another process, no notification): the waiter's poll finds
    it."""
    clock = FakeClock(auto_advance=True)
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex)
    try:
        eid = await ex.dispatch(approval)
        await _until_waiting(ex, eid)
        assert await stent_backend.send_signal(eid, "approve", b'"quiet"', clock.now())
        assert await asyncio.wait_for(ex.wait_for(eid), 20) == Result.Ok("quiet")
    finally:
        clock.stop()
        await stop_worker(ex, w)


async def test_a_suspended_waiter_resumes_by_replay_when_its_signal_arrives(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex, suspend_after=1.0)
    try:
        eid = await ex.dispatch(step_before_signal)
        await _until_waiting(ex, eid)
        await clock.advance(3)  # past suspend_after: coroutine, lease and slot given back
        for _ in range(200):
            root = await stent_backend.get_task(eid)
            if root is not None and root.state == "waiting" and root.worker_id is None:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the waiting workflow was not suspended")
        assert not ex.worker_status_overview()["workers"][0]["active_tasks"]
        await ex.send_signal(eid, "resume", [1, 2])
        assert await _wait(ex, eid) == Result.Ok([1, 2])
        assert runs["step"] == 2  # the step before the wait was not run again on replay
    finally:
        await stop_worker(ex, w)


async def test_signal_to_an_unknown_execution_raises_execution_not_found(
    stent_executor: Stent,
) -> None:
    with pytest.raises(ExecutionNotFound, match="no-such-id"):
        await stent_executor.send_signal("no-such-id", "approve", 1)


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "x" * 201, "quote'", None, 3])
async def test_bad_signal_names_are_refused_before_anything_is_written(
    stent_executor: Stent, name: Any
) -> None:
    eid = await stent_executor.dispatch(approval)
    with pytest.raises(ValueError, match="signal name"):
        await stent_executor.send_signal(eid, name, 1)
    assert [t.kind for t in await stent_executor.backend.list_tasks_for_execution(eid)] == [
        "function"]


async def test_unserializable_and_oversize_payloads_are_refused(stent_backend: Backend) -> None:
    ex = Stent(stent_backend, clock=FakeClock(), max_payload_bytes=1000)
    eid = await ex.dispatch(approval)
    with pytest.raises(SerializationError, match="approve"):
        await ex.send_signal(eid, "approve", object())
    with pytest.raises(SerializationError):
        await ex.send_signal(eid, "approve", float("nan"))
    with pytest.raises(PayloadTooLargeError):
        await ex.send_signal(eid, "approve", "x" * 2000)
    await ex.shutdown()


async def test_wait_for_signal_outside_a_task_raises() -> None:
    with pytest.raises(NotInExecutionContext):
        await Stent.wait_for_signal("approve")


_BAD_TIMEOUTS: dict[str, Any] = {
    "negative": -1, "nan": float("nan"), "inf": float("inf"), "word": "soon", "minus": "-5s",
}


@Stent.durable
async def bad_timeout(which: str) -> None:
    await Stent.wait_for_signal("x", timeout=_BAD_TIMEOUTS[which])


@pytest.mark.parametrize("which", sorted(_BAD_TIMEOUTS))
async def test_bad_signal_timeouts_are_value_errors(stent_worker: Stent, which: str) -> None:
    eid = await stent_worker.dispatch(bad_timeout, which)
    result = await _wait(stent_worker, eid)
    assert isinstance(result.error, ValueError)
    tasks = await stent_worker.backend.list_tasks_for_execution(eid)
    assert [t.kind for t in tasks] == ["function"]  # no signal wait was written

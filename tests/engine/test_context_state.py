"""``Stent.context()`` counters and custom state: atomic, applied exactly once even when a
task is replayed after its worker died (SPEC §3, §4)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from stent import NotInExecutionContext, Result, SerializationError, Stent
from stent_testing import CrashPlan

runs: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()


@Stent.durable
async def tallies(n: int) -> dict[str, Any]:
    ctx = Stent.context()
    for _ in range(n):
        await ctx.increment("emails")
    await ctx.increment("bytes", by=1500)
    await ctx.set_state("phase", "sent")
    await ctx.set_state("phase", {"name": "done", "at": [1, 2]})
    return {"attempt": ctx.attempt, "execution": ctx.execution_id}


@Stent.durable
async def counted_child(i: int) -> int:
    await Stent.context().increment("children")
    return i


@Stent.durable
async def parent_of_counters() -> list[int]:
    await Stent.context().increment("parent")
    return list(await asyncio.gather(*(counted_child(i) for i in range(5))))


@Stent.durable
async def increments_then_crashes() -> str:
    ctx = Stent.context()
    await ctx.increment("before")
    await ctx.set_state("stage", "one")
    await marker()
    await ctx.increment("after")
    return "ok"


@Stent.durable
async def marker() -> None:
    runs["marker"] += 1


@Stent.durable
async def bad_state(which: str) -> None:
    ctx = Stent.context()
    if which == "object":
        await ctx.set_state("k", object())
    elif which == "nan":
        await ctx.set_state("k", float("nan"))
    elif which == "name":
        await ctx.increment("bad name")
    elif which == "by":
        await ctx.increment("n", by=1.5)  # type: ignore[arg-type]


async def _wait(ex: Stent, eid: str) -> Result[Any]:
    return await asyncio.wait_for(ex.wait_for(eid), 20)


async def test_counters_and_custom_state_show_in_state_of(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(tallies, 3)
    result = await _wait(stent_worker, eid)
    assert result == Result.Ok({"attempt": 1, "execution": eid})
    state = await stent_worker.state_of(eid)
    assert state.counters == {"emails": 3, "bytes": 1500}
    assert state.custom_state == {"phase": {"name": "done", "at": [1, 2]}}


async def test_counters_from_concurrent_children_all_count(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(parent_of_counters)
    assert await _wait(stent_worker, eid) == Result.Ok([0, 1, 2, 3, 4])
    assert (await stent_worker.state_of(eid)).counters == {"parent": 1, "children": 5}


@pytest.mark.parametrize("point", ["after_step_recorded", "before_step", "after_step_result"])
async def test_a_replay_after_a_crash_applies_each_change_once(
    stent_worker: Stent, crash: CrashPlan, point: str
) -> None:
    crash.at(point, step=marker.name)
    eid = await stent_worker.dispatch(increments_then_crashes)
    assert await _wait(stent_worker, eid) == Result.Ok("ok")
    assert crash.crashes, "the crash never happened"
    state = await stent_worker.state_of(eid)
    assert state.counters == {"before": 1, "after": 1}
    assert state.custom_state == {"stage": "one"}


@pytest.mark.parametrize(("which", "error"), [
    ("object", SerializationError), ("nan", SerializationError), ("name", ValueError),
    ("by", ValueError),
])
async def test_bad_counter_and_state_values_fail_with_a_typed_error(
    stent_worker: Stent, which: str, error: type[Exception]
) -> None:
    eid = await stent_worker.dispatch(bad_state, which)
    result = await _wait(stent_worker, eid)
    assert isinstance(result.error, error)
    state = await stent_worker.state_of(eid)
    assert state.counters == {} and state.custom_state == {}


async def test_context_outside_a_task_raises() -> None:
    with pytest.raises(NotInExecutionContext):
        Stent.context()

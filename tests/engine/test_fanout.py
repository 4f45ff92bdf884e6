"""Fan-out: ``map``/``starmap`` in all three call modes, children created in batches (one
write per batch), deterministic ``gather``, and a large map with bounded memory."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from stent import Result, SerializationError, Stent
from stent import steps as stent_steps
from stent.backend import Backend
from stent_testing import CrashPlan, FakeClock

from .helpers import start_worker, stop_worker

runs: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()


@Stent.durable
async def square(x: int) -> int:
    runs["square"] += 1
    return x * x


@Stent.durable
async def add(a: int, b: int = 0) -> int:
    return a + b


@Stent.durable
async def squares(n: int) -> int:
    values = await square.map(range(n))
    assert values == [i * i for i in range(n)]
    return sum(values)


@Stent.durable
async def adds() -> list[int]:
    return await add.starmap([(1, 2), ((3,), {"b": 4}), {"a": 5, "b": 6}])


@Stent.durable
async def fails_at(x: int) -> int:
    if x == 30:
        raise ValueError(f"bad item {x}")
    return x


@Stent.durable
async def map_with_a_failure() -> str:
    try:
        await fails_at.map(range(40))
    except ValueError as exc:
        return f"caught {exc}"
    return "no error"


@Stent.durable
async def unserializable_map() -> None:
    await square.map([1, object(), 3])


def test_map_without_an_executor_runs_the_bodies_directly() -> None:
    assert asyncio.run(square.map([1, 2, 3])) == [1, 4, 9]  # type: ignore[arg-type]
    assert asyncio.run(add.starmap([(1, 2), {"a": 2}])) == [3, 2]  # type: ignore[arg-type]


async def test_map_outside_a_task_is_one_execution_whose_root_fans_out(stent_worker: Stent) -> None:
    assert await asyncio.wait_for(square.map([1, 2, 3, 4]), 20) == [1, 4, 9, 16]
    executions = await stent_worker.list_executions()
    assert len(executions) == 1 and executions[0].function == "stent.map"


async def test_starmap_takes_tuples_pairs_and_dicts_in_a_task(stent_worker: Stent) -> None:
    result = await asyncio.wait_for(stent_worker.wait_for(await stent_worker.dispatch(adds)), 20)
    assert result == Result.Ok([3, 7, 11])


async def test_a_large_map_inserts_children_in_batches_one_write_each(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    writes: list[int] = []
    original = stent_backend.create_steps

    async def counting(parent_id: str, fence: int, news: Any, now: Any) -> Any:
        writes.append(len(news))
        return await original(parent_id, fence, news, now)

    stent_backend.create_steps = counting  # type: ignore[method-assign]
    w = await start_worker(ex, max_concurrency=16)
    try:
        n = stent_steps.MAP_BATCH * 2 + 7
        eid = await ex.dispatch(squares, n)
        result = await asyncio.wait_for(ex.wait_for(eid), 120)
        assert result == Result.Ok(sum(i * i for i in range(n)))
        assert writes == [stent_steps.MAP_BATCH, stent_steps.MAP_BATCH, 7]
        assert runs["square"] == n
    finally:
        stent_backend.create_steps = original  # type: ignore[method-assign]
        await stop_worker(ex, w)


async def test_a_failed_item_raises_in_the_caller_where_it_can_be_caught(
    stent_worker: Stent,
) -> None:
    eid = await stent_worker.dispatch(map_with_a_failure)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 60)
    assert result == Result.Ok("caught bad item 30")


async def test_an_unserializable_item_fails_before_any_child_is_written(
    stent_worker: Stent,
) -> None:
    eid = await stent_worker.dispatch(unserializable_map)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 20)
    assert isinstance(result.error, SerializationError)
    assert len(await stent_worker.backend.list_tasks_for_execution(eid)) == 1


async def test_a_map_resumed_after_a_crash_runs_no_finished_item_again(
    stent_worker: Stent, crash: CrashPlan
) -> None:
    crash.at("after_step_recorded", step=square.name)
    eid = await stent_worker.dispatch(squares, 60)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 60)
    assert result == Result.Ok(sum(i * i for i in range(60)))
    assert crash.crashes
    tasks = await stent_worker.backend.list_tasks_for_execution(eid)
    assert sum(1 for t in tasks if t.step_name == square.name) == 60
    # each body ran once, except items running when the worker died (at least once)
    assert 60 <= runs["square"] <= 60 + 16


async def test_a_ten_thousand_item_map_completes_with_bounded_waits(
    stent_backend: Backend, stent_backend_kind: str
) -> None:
    """Mode 2: one execution whose root fans out; at no time does the process wait on more
    than one batch of children."""
    n = 2_000 if stent_backend_kind == "postgres" else 10_000
    clock = FakeClock()
    ex = Stent.use(stent_backend, clock=clock)
    peak = 0
    watch = ex.hub.watch

    def counting_watch(task_id: str) -> Any:
        nonlocal peak
        fut = watch(task_id)
        peak = max(peak, len(ex.hub.outstanding()))
        return fut

    ex.hub.watch = counting_watch  # type: ignore[method-assign]
    w = await start_worker(ex, max_concurrency=32)
    try:
        values = await asyncio.wait_for(square.map(range(n)), 300)
        assert values == [i * i for i in range(n)]
        assert runs["square"] == n
        assert peak <= stent_steps.MAP_BATCH + 5, peak
        executions = await ex.list_executions()
        assert [e.function for e in executions] == ["stent.map"]
    finally:
        await stop_worker(ex, w)
        Stent.reset()

"""The three call modes of a durable function (SPEC §2.1)."""

from __future__ import annotations

import inspect
from collections import Counter

import pytest
from stent import DurableFunction, Result, Stent

runs: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset_runs() -> None:
    runs.clear()


@Stent.durable
async def double(x: int) -> int:
    """Twice x."""
    runs["double"] += 1
    return 2 * x


@Stent.durable()
async def pipeline(x: int) -> int:
    a = await double(x)
    b = await double(a)
    return b + 1


@Stent.durable(name="tests.engine.explicit", priority=3, tags=["cpu"])
async def explicit(x: int) -> Result[int]:
    return Result.Ok(x)


async def test_mode_1_runs_the_body_directly_without_an_executor() -> None:
    Stent.reset()
    assert await pipeline(3) == 13
    assert runs["double"] == 2


def test_durable_function_keeps_name_doc_and_signature() -> None:
    assert isinstance(double, DurableFunction)
    assert double.__name__ == "double"
    assert double.__doc__ == "Twice x."
    assert list(inspect.signature(double).parameters) == ["x"]
    assert explicit.name == "tests.engine.explicit"
    assert explicit.priority == 3 and explicit.tags == ("cpu",)
    assert double.name.endswith(":double")


async def test_mode_2_dispatches_and_waits_through_the_default_executor(stent_worker: Stent) -> None:
    assert await pipeline(3) == 13
    executions = await stent_worker.list_executions()
    assert [e.function for e in executions] == [pipeline.name]
    assert executions[0].state == "completed" and executions[0].result == 13


async def test_mode_3_records_every_call_as_a_step(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(pipeline, 5)
    result = await stent_worker.wait_for(eid)
    assert result == Result.Ok(21)
    tasks = await stent_worker.backend.list_tasks_for_execution(eid)
    assert [(t.step_name, t.parent_id, t.seq, t.state) for t in tasks] == [
        (pipeline.name, None, 0, "completed"),
        (double.name, eid, 0, "completed"),
        (double.name, eid, 1, "completed"),
    ]


async def test_a_returned_result_is_handed_back_unchanged_in_every_mode(stent_worker: Stent) -> None:
    assert await explicit(4) == Result.Ok(4)
    eid = await stent_worker.dispatch(explicit, 5)
    assert await stent_worker.wait_for(eid) == Result.Ok(5)
    assert await stent_worker.result_of(eid) == Result.Ok(5)


async def test_map_and_starmap_keep_input_order_in_modes_2_and_3(stent_worker: Stent) -> None:
    assert await double.map([1, 2, 3]) == [2, 4, 6]
    assert await double.starmap([(4,), ((5,), {}), {"x": 6}]) == [8, 10, 12]


async def test_map_in_mode_1_runs_bodies_directly() -> None:
    Stent.reset()
    assert await double.map(range(4)) == [0, 2, 4, 6]

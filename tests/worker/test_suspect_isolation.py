"""White-box: while a suspect runs alone on a worker (``Worker._suspect``, marked alone in
storage), a task waiting there whose steps finish is not resumed beside it: its whole run
stops and is given back, and it resumes by replay. However its user code awaited the steps
(directly, ``gather(return_exceptions=True)``, a task group, a timeout), no user code sees
the interruption and no recorded result is changed."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from stent import Result, Stent
from stent.context import current_task_context

runs: Counter[str] = Counter()
FAKE = "a-suspect-running-alone"


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()


def _pretend_a_suspect_runs_alone() -> None:
    """As if this worker had just started a suspect alone; it "ends" 300 ms later."""
    ctx = current_task_context()
    assert ctx is not None
    worker: Any = ctx.worker
    worker._suspect = FAKE

    def end() -> None:
        if worker._suspect == FAKE:
            worker._suspect = None
            worker.wake()

    asyncio.get_running_loop().call_later(0.3, end)


@Stent.durable
async def part(i: int) -> int:
    runs[f"part{i}"] += 1
    await asyncio.sleep(0.01 * i)
    if i == 2 and runs["part2"] == 1:
        _pretend_a_suspect_runs_alone()
    return i


@Stent.durable
async def direct() -> str:
    runs["direct"] += 1
    first = await part(1)
    second = await part(2)
    return f"{first},{second}"


@Stent.durable
async def gathered() -> str:
    runs["gathered"] += 1
    got = await asyncio.gather(part(1), part(2), return_exceptions=True)
    return repr(got)


@Stent.durable
async def grouped() -> str:
    runs["grouped"] += 1
    async with asyncio.TaskGroup() as tg:
        a = tg.create_task(part(1))
        b = tg.create_task(part(2))
    return repr([a.result(), b.result()])


@Stent.durable
async def timed() -> str:
    runs["timed"] += 1
    try:
        async with asyncio.timeout(30):
            got = await asyncio.gather(part(1), part(2))
    except TimeoutError:  # what a timeout would make of a stray cancellation
        return "user code saw a time-out"
    return repr(got)


@pytest.mark.parametrize(
    ("flow", "expected"),
    [(direct, "1,2"), (gathered, "[1, 2]"), (grouped, "[1, 2]"), (timed, "[1, 2]")],
)
async def test_a_waiting_task_is_given_back_not_resumed_beside_a_suspect(
    stent_worker: Stent, flow: Any, expected: str
) -> None:
    eid = await stent_worker.dispatch(flow)
    assert await asyncio.wait_for(stent_worker.wait_for(eid), 30) == Result.Ok(expected)
    # the flow ran again (given back, then replayed); its steps ran once each
    assert runs[flow.name.rsplit(":", 1)[-1]] == 2
    assert (runs["part1"], runs["part2"]) == (1, 1)

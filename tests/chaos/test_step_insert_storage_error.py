"""One failed step insert must not cost a workflow an attempt (found by the connection
terminations of ``test_infra_faults.py``, part b).

A durable call that writes its step row before it runs (a durable sleep, a capped or cached
step, ``Stent.now()``/``uuid4()``, a step of a task taken over after a crash) awaits
``backend.create_step`` through ``steps._insert_or_stop``, which handles only
``LeaseLostError``. A ``BackendError`` (the connection cut mid-statement, the server briefly
away) therefore comes up through the user's function as if the function itself had raised
it: the runner retries the task as a new attempt, whose step keys (parent, *attempt*, seq)
are all new, so every step the failed attempt had already completed runs again (and with
``max_attempts`` such errors in a row the workflow fails outright). Every other write of a
running task (completions, inline step records, heartbeats) retries through storage trouble
until its lease runs out (``runner.Runner._write``).

Here the backend refuses exactly one step insert with a ``BackendError``, as a terminated
connection does; the step before it must have run once, and the workflow must finish in
its first attempt.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from stent import Result, Stent
from stent.errors import BackendError

from ..engine.helpers import start_worker, stop_worker

runs: Counter[str] = Counter()


@Stent.durable(name="insertfault.count")
async def count(key: str) -> str:
    runs[key] += 1
    return key


@Stent.durable(name="insertfault.capped", max_concurrent=4)
async def capped(key: str) -> str:
    return key


@Stent.durable(name="insertfault.flow")
async def flow(key: str, then: str) -> str:
    await count(key)  # inline, recorded with its outcome: the write that must not repeat
    if then == "sleep":
        await Stent.sleep(0.05)
    elif then == "capped_step":
        await capped(key)
    elif then == "uuid4":
        await Stent.uuid4()
    return key


@pytest.fixture
def stent_backend_kind() -> str:
    return "memory"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("then", ["sleep", "capped_step", "uuid4"])
async def test_a_step_insert_refused_by_storage_does_not_rerun_completed_steps(
    stent_backend: Any, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    key = f"insertfault-{then}"
    runs.pop(key, None)
    real = stent_backend.create_step
    refused: list[str] = []

    async def create_step(parent_id: str, parent_fence: int, new: Any, now: Any,
                          *args: Any, **kwargs: Any) -> Any:
        if not refused and new.step_name != "insertfault.count":
            refused.append(new.step_name)
            raise BackendError("PostgreSQL at postgresql://db/x (create_step): connection "
                               "was closed in the middle of operation [SQLSTATE 08003]")
        return await real(parent_id, parent_fence, new, now, *args, **kwargs)

    monkeypatch.setattr(stent_backend, "create_step", create_step)
    ex = Stent(stent_backend)
    worker = await start_worker(ex, poll_interval=0.05, max_concurrency=4)
    try:
        eid = await ex.dispatch(flow, key, then)
        result = await asyncio.wait_for(ex.wait_for(eid), 30)
        root = await stent_backend.get_task(eid)
    finally:
        await stop_worker(ex, worker)
    assert refused, "the fault was not injected"
    assert result == Result.Ok(key)
    assert runs[key] == 1, (
        f"the step before the refused {refused[0]} insert ran {runs[key]} times: the "
        f"BackendError failed the workflow's attempt (now attempt {root.attempt}, retries "
        f"{root.retries}) and the retry ran its completed steps again")
    assert root.attempt == 1, root

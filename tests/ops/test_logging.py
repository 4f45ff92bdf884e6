"""Engine log records about a task carry ``execution_id``, ``task_id`` and ``worker_id``
(``extra=``), and no record at INFO or above quotes an argument value or a result."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from stent import Result, Stent
from stent.backend import Backend

from ..engine.helpers import start_worker, stop_worker
from . import traced_workflows as wf

WORKER_ID = "w-logging"


@pytest.mark.parametrize("stent_backend_kind", ["memory", "sqlite"])
async def test_task_log_records_carry_ids_and_never_argument_values(
    stent_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG, logger="stent")
    ex = Stent(stent_backend)
    w = await start_worker(ex, worker_id=WORKER_ID, poll_interval=0.05)
    eid = await ex.dispatch(wf.mixed, canary, canary)
    result = await asyncio.wait_for(ex.wait_for(eid), 20)
    await stop_worker(ex, w)
    assert result == Result.Ok(["ok", "ValueError", "SerializationError"])
    tasks = {t.step_name: t for t in await stent_backend.list_tasks_for_execution(eid)}
    records = [r for r in caplog.records if r.name.startswith("stent")]

    def about(task_name: str, text: str) -> logging.LogRecord:
        task_id = tasks[task_name].id
        found = [r for r in records if task_id in r.getMessage() and text in r.getMessage()]
        assert len(found) == 1, [r.getMessage() for r in records]
        return found[0]

    flaky_retry = about("ops.flaky", "attempt 2")
    fails_retry = about("ops.always_fails", "attempt 2")
    fails_dead = about("ops.always_fails", "dead-lettered")
    unstorable_dead = about("ops.unstorable", "dead-lettered")
    assert flaky_retry.levelno == fails_retry.levelno == logging.INFO
    assert fails_dead.levelno == unstorable_dead.levelno == logging.WARNING
    assert "SerializationError" in unstorable_dead.getMessage()  # its type, not its message

    # every record that names one of the execution's tasks carries all three ids
    task_ids = {t.id for t in tasks.values()}
    about_tasks = [r for r in records if any(t in r.getMessage() for t in task_ids)]
    assert len(about_tasks) >= 4
    for r in about_tasks:
        assert r.execution_id == eid, r.getMessage()  # type: ignore[attr-defined]
        assert r.task_id in task_ids and r.task_id in r.getMessage()  # type: ignore[attr-defined]
        assert r.worker_id == WORKER_ID, r.getMessage()  # type: ignore[attr-defined]
    # and every record of the runner and the worker says which worker wrote it
    for r in records:
        if r.name in ("stent.runner", "stent.worker"):
            assert getattr(r, "worker_id", None) == WORKER_ID, r.getMessage()

    # the canary went in as an argument, came back in error messages and as a dict key in
    # an unstorable result: no record at INFO or above quotes it
    loud = [r for r in records if r.levelno >= logging.INFO]
    assert loud
    for r in loud:
        assert canary not in r.getMessage(), r.getMessage()

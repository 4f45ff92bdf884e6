"""Arranging the states the conformance tests start from, through the backend protocol only.

Every helper drives the backend with explicit times (:func:`~.builders.at`), so a scenario is
the same on every backend and needs no clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from stent.backend import Backend
from stent.records import (
    ClaimFilter,
    ExecutionRecord,
    Lease,
    NewExecution,
    NewTask,
    TaskKind,
    TaskRecord,
)

from .builders import T0, at, claim_filter, new_execution, new_task

#: The step name of the suite's signal waits (the engine's own; any name does for a backend).
SIGNAL_STEP = "stent.signal"

#: The lease the suite's claims run until, unless a test says otherwise.
LEASE_UNTIL = at(60)


async def dispatch(backend: Backend, now: datetime = T0, **fields: Any) -> NewExecution:
    """Create an execution (see :func:`~.builders.new_execution` for ``fields``).

    Returns:
        What was inserted, for its ids.
    """
    new = new_execution(**fields)
    execution_id, created = await backend.create_execution(new, now)
    assert (execution_id, created) == (new.id, True)
    return new


async def claim_only(
    backend: Backend,
    task_id: str,
    *,
    worker: str = "worker-1",
    now: datetime = T0,
    lease_until: datetime = LEASE_UNTIL,
    claim_filter_: ClaimFilter | None = None,
) -> TaskRecord:
    """Claim with limit 1 and check that the task claimed is ``task_id``.

    Returns:
        The claimed record (with its new fence).
    """
    got = await backend.claim(worker, claim_filter_ or claim_filter(), 1, now, lease_until)
    assert [t.id for t in got] == [task_id], f"expected to claim {task_id}, got {got!r}"
    return got[0]


async def start(
    backend: Backend, *, worker: str = "worker-1", now: datetime = T0, **fields: Any
) -> tuple[NewExecution, TaskRecord]:
    """Dispatch an execution and claim its root task, which is then running.

    Returns:
        The inserted execution and the claimed root task.
    """
    new = await dispatch(backend, now=now, **fields)
    root = await claim_only(backend, new.root.id, worker=worker, now=now)
    return new, root


async def add_step(
    backend: Backend,
    parent: TaskRecord,
    seq: int,
    *,
    lease: Lease | None = None,
    now: datetime = T0,
    **fields: Any,
) -> TaskRecord:
    """Create a new child of a held ``parent`` at ``(parent.id, parent.attempt, seq)``.

    Returns:
        The created child.
    """
    new = new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=seq, **fields)
    child, created = await backend.create_step(parent.id, parent.fence, new, now, lease)
    assert created, f"step {seq} of {parent.id} already existed"
    return child


async def running_step(
    backend: Backend, parent: TaskRecord, seq: int, *, worker: str = "worker-1",
    now: datetime = T0, **fields: Any,
) -> TaskRecord:
    """Create a child born leased to ``worker`` (as a worker does to run it locally).

    Returns:
        The created, running child.
    """
    lease = Lease(worker_id=worker, expires_at=LEASE_UNTIL)
    return await add_step(backend, parent, seq, lease=lease, now=now, **fields)


async def stored_task(backend: Backend, task_id: str) -> TaskRecord:
    """The stored task, which must exist."""
    task = await backend.get_task(task_id)
    assert task is not None, f"task {task_id} is missing"
    return task


async def stored_execution(backend: Backend, execution_id: str) -> ExecutionRecord:
    """The stored execution, which must exist."""
    ex = await backend.get_execution(execution_id)
    assert ex is not None, f"execution {execution_id} is missing"
    return ex


def events(ex: ExecutionRecord) -> list[str]:
    """The event names of an execution's progress log, in order."""
    return [str(entry.get("event")) for entry in ex.progress]


def signal_step(
    parent: TaskRecord, seq: int, *, timeout_at: datetime | None = None, **fields: Any
) -> NewTask:
    """The row of a signal wait at ``(parent.id, parent.attempt, seq)``: born ``waiting``
    without a timeout, or ``pending`` due at ``timeout_at``."""
    fields.setdefault("name", SIGNAL_STEP)
    return new_task(
        parent_id=parent.id, parent_attempt=parent.attempt, seq=seq, kind=TaskKind.SIGNAL,
        state="waiting" if timeout_at is None else "pending",
        due_at=timeout_at if timeout_at is not None else T0, **fields,
    )


async def wait_signal(
    backend: Backend,
    parent: TaskRecord,
    seq: int,
    name: str,
    *,
    timeout_at: datetime | None = None,
    now: datetime = T0,
    **fields: Any,
) -> TaskRecord:
    """Create a new signal wait for ``name`` under a held ``parent`` (see :func:`signal_step`).

    Returns:
        The created wait: ``completed`` if it consumed a buffered signal, else waiting.
    """
    new = signal_step(parent, seq, timeout_at=timeout_at, **fields)
    task, created = await backend.create_signal_wait(parent.id, parent.fence, new, name, now)
    assert created, f"step {seq} of {parent.id} already existed"
    assert task.id == new.id
    return task

"""The engine's operations on PostgreSQL.

Each is one statement from ``queries/postgres.sql``, so one transaction and one round trip:
a chain of CTEs, or a call to a PL/pgSQL function of the schema (whose statements each see a
fresh snapshot; see ``stent_finish_task`` and ``schema/postgres/0002_cancellation.sql``).
Two rare fallbacks need a fresh snapshot of their own: a dispatch or a step insert that lost
a race to a transaction that committed while it ran looks again in a second statement. Every
state rule of the reference backend (``stent_testing.memory``) is a WHERE clause or a
PL/pgSQL branch in SQL, never a read-modify-write here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from stent.errors import BackendError, LeaseLostError
from stent.records import (
    LIVE_EXECUTION_STATES,
    ClaimFilter,
    Lease,
    NewExecution,
    NewTask,
    StepRecord,
    TaskOutcome,
    TaskRecord,
)

from ._pg_db import PostgresDatabase
from ._pg_rows import (
    execution_args,
    iso,
    progress,
    step_args,
    step_from_row,
    task_from_row,
    utc,
)


async def create_execution(
    db: PostgresDatabase, new: NewExecution, now: datetime
) -> tuple[str, bool]:
    """Insert an execution and its root task unless the id or idempotency key is taken."""
    row = await db.fetchrow("insert_execution", *execution_args(new, now))
    assert row is not None  # the statement always returns one row
    if row["created"] is not None:
        return str(row["created"]), True
    if row["existing"] is not None:
        return str(row["existing"]), False
    # ON CONFLICT waited for a concurrent dispatch of the same id or key and then inserted
    # nothing; that execution committed after this statement's snapshot: look again.
    existing = await db.fetchval("execution_id_taken", new.id, new.idempotency_key)
    if existing is None:
        raise BackendError(f"execution {new.id!r} was neither created nor found (it was "
                           "deleted while being dispatched); dispatch it again")
    return str(existing), False


def _claim_args(
    worker_id: str, claim_filter: ClaimFilter, limit: int, now: datetime,
    lease_until: datetime,
) -> tuple[object, ...]:
    queues = claim_filter.queues
    return (
        worker_id,
        sorted(claim_filter.names),
        None if queues is None else [q for q in queues if q is not None],
        queues is not None and None in queues,
        list(claim_filter.tags) if claim_filter.tags else None,
        limit,
        utc(now),
        utc(lease_until),
        progress("running", now),
    )


async def claim(
    db: PostgresDatabase, worker_id: str, claim_filter: ClaimFilter, limit: int,
    now: datetime, lease_until: datetime,
) -> list[TaskRecord]:
    """Lease up to ``limit`` eligible tasks in claim order; start their executions."""
    rows = await db.fetch("claim", *_claim_args(worker_id, claim_filter, limit, now,
                                                lease_until))
    return [task_from_row(r) for r in rows]


async def create_step(
    db: PostgresDatabase, parent_id: str, parent_fence: int, new: NewTask, now: datetime,
    lease: Lease | None,
) -> tuple[TaskRecord, bool]:
    """Insert a child at its step key unless taken, fenced on the parent."""
    rows = await db.fetch("insert_step", *step_args(parent_id, parent_fence, new, now, lease))
    if rows:
        return task_from_row(rows[0]), bool(rows[0]["created"])
    # Nothing came back: the parent is not held at this fence, its execution is not live,
    # or the key was taken by an insert that committed after this statement's snapshot (ON
    # CONFLICT waited for it). A new statement sees these answers as they are now.
    held = await db.fetchrow("held_task_execution_state", parent_id, parent_fence)
    if held is None:
        raise LeaseLostError(f"task {parent_id} is no longer held at fence {parent_fence}")
    if held["state"] is not None and held["state"] not in LIVE_EXECUTION_STATES:
        raise LeaseLostError(f"the execution of task {parent_id} is {held['state']}: "
                             "no new steps")
    existing = await db.fetchrow("task_by_step_key", parent_id, new.parent_attempt, new.seq)
    if existing is None:
        raise BackendError(f"step {new.seq} of task {parent_id} was neither created nor "
                           "found (it was deleted meanwhile)")
    return task_from_row(existing), False


async def load_steps(db: PostgresDatabase, parent_id: str, attempt: int) -> list[StepRecord]:
    """Every recorded child of ``parent_id`` at ``attempt``, by sequence number."""
    return [step_from_row(r) for r in await db.fetch("load_steps", parent_id, attempt)]


async def complete_task(
    db: PostgresDatabase, task_id: str, fence: int, result: bytes, now: datetime
) -> bool:
    """Record a result (fenced); wake the parent or finish the execution."""
    done = await db.fetchval("complete_task", task_id, fence, result, utc(now),
                             progress("completed", now))
    return bool(done)


async def fail_task(
    db: PostgresDatabase, task_id: str, fence: int, error: bytes, now: datetime,
    dead_letter_reason: str | None,
) -> bool:
    """Record a final failure (fenced), with a dead letter when a reason is given."""
    done = await db.fetchval("fail_task", task_id, fence, error, dead_letter_reason, utc(now),
                             progress("failed", now))
    return bool(done)


async def retry_task(
    db: PostgresDatabase, task_id: str, fence: int, error: bytes, due_at: datetime,
    now: datetime,
) -> bool:
    """Schedule the next attempt (fenced) and log it; cancel the task instead if its
    execution is not live."""
    done = await db.fetchval("retry_task", task_id, fence, error, utc(due_at), utc(now),
                             iso(now), progress("cancelled", now))
    return bool(done)


async def release_task(db: PostgresDatabase, task_id: str, fence: int, now: datetime) -> bool:
    """Give a running task back (fenced); cancel it instead if its execution is not live."""
    return bool(await db.fetchval("release_task", task_id, fence, utc(now),
                                  progress("cancelled", now)))


async def suspend_task(
    db: PostgresDatabase, task_id: str, fence: int, awaited: Sequence[str], now: datetime
) -> bool:
    """Drop the lease of a task waiting on ``awaited`` (fenced): waiting, or pending."""
    done = await db.fetchval("suspend_task", task_id, fence, list(awaited), utc(now), iso(now),
                             progress("cancelled", now))
    return bool(done)


async def renew_leases(
    db: PostgresDatabase, worker_id: str, held: Sequence[tuple[str, int]],
    lease_until: datetime,
) -> set[str]:
    """Extend the leases still held (fenced, and by this worker); return the lost ids (those
    of executions that are not live are cancelled, at ``lease_until``)."""
    ids = [task_id for task_id, _ in held]
    fences = [fence for _, fence in held]
    rows = await db.fetch("renew_leases", worker_id, ids, fences, utc(lease_until),
                          progress("cancelled", lease_until))
    renewed = {r["id"] for r in rows}
    return {task_id for task_id in ids if task_id not in renewed}


async def get_outcomes(db: PostgresDatabase, task_ids: Sequence[str]) -> list[TaskOutcome]:
    """Outcomes of the finished ones of ``task_ids``, in the order asked."""
    found = {
        r["id"]: TaskOutcome(r["id"], r["state"], r["result"], r["error"])
        for r in await db.fetch("get_outcomes", list(task_ids))
    }
    return [found[t] for t in task_ids if t in found]


# -- cancellation and deadlines ----------------------------------------------------------------
async def cancel_execution(
    db: PostgresDatabase, execution_id: str, error: bytes, now: datetime
) -> str | None:
    """Cancelling (or cancelled at once, when nothing runs); its unstarted tasks cancelled.
    Returns the state afterwards, None if there is no such execution."""
    state = await db.fetchval("cancel_execution", execution_id, error, utc(now),
                              progress("cancelling", now), progress("cancelled", now))
    return None if state is None else str(state)


async def cancel_task(db: PostgresDatabase, task_id: str, fence: int, now: datetime) -> bool:
    """A running task stopped for its execution's cancellation (fenced)."""
    return bool(await db.fetchval("cancel_task", task_id, fence, utc(now),
                                  progress("cancelled", now)))


async def expire_executions(
    db: PostgresDatabase, error: bytes, now: datetime, limit: int
) -> list[str]:
    """Time out executions past their deadline; cancel orphans of stopped executions."""
    rows = await db.fetch("expire_executions", error, utc(now), limit,
                          progress("timed_out", now), progress("cancelled", now))
    return [str(r["id"]) for r in rows]

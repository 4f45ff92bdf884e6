"""The engine's operations on PostgreSQL.

Each is one statement from ``queries/postgres.sql``, so one transaction and one round trip:
a chain of CTEs, or a call to a PL/pgSQL function of the schema (whose statements each see a
fresh snapshot; see ``stent_finish_task`` and ``schema/postgres/0002_cancellation.sql``).
Two rare fallbacks need a fresh snapshot of their own: a dispatch or a step insert that lost
a race to a transaction that committed while it ran looks again in a second statement (and a
step insert that found its parent not held asks why, for the error). Every
state rule of the reference backend (``stent_testing.memory``) is a WHERE clause or a
PL/pgSQL branch in SQL, never a read-modify-write here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from stent.errors import BackendError, LeaseLostError
from stent.records import (
    LIVE_EXECUTION_STATES,
    CacheClaim,
    ClaimFilter,
    ExecutionEffect,
    Lease,
    NewExecution,
    NewTask,
    StepRecord,
    TaskOutcome,
    TaskRecord,
)

from ._pg_db import PostgresDatabase
from ._pg_rows import (
    effect_args,
    execution_args,
    iso,
    progress,
    signal_wait_args,
    step_args,
    step_from_row,
    steps_args,
    task_from_row,
    utc,
)

#: ExecutionEffect kinds record_effect applies.
_EFFECT_KINDS = frozenset({"increment", "set_state"})


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
    return await _not_inserted(db, parent_id, parent_fence, new), False


async def _check_held(db: PostgresDatabase, parent_id: str, parent_fence: int) -> None:
    """Raise LeaseLostError unless ``parent_id`` is held at ``parent_fence`` in a live
    execution (a new statement: it sees those answers as they are now)."""
    held = await db.fetchrow("held_task_execution_state", parent_id, parent_fence)
    if held is None:
        raise LeaseLostError(f"task {parent_id} is no longer held at fence {parent_fence}")
    if held["state"] is not None and held["state"] not in LIVE_EXECUTION_STATES:
        raise LeaseLostError(f"the execution of task {parent_id} is {held['state']}: "
                             "no new steps")


async def _not_inserted(
    db: PostgresDatabase, parent_id: str, parent_fence: int, new: NewTask
) -> TaskRecord:
    """Why a single-statement step insert returned nothing: the parent is not held at this
    fence, its execution is not live (LeaseLostError), or the key was taken by an insert that
    committed after the statement's snapshot (ON CONFLICT waited for it): that row."""
    await _check_held(db, parent_id, parent_fence)
    existing = await db.fetchrow("task_by_step_key", parent_id, new.parent_attempt, new.seq)
    if existing is None:
        raise BackendError(f"step {new.seq} of task {parent_id} was neither created nor "
                           "found (it was deleted meanwhile)")
    return task_from_row(existing)


async def create_steps(
    db: PostgresDatabase, parent_id: str, parent_fence: int, news: Sequence[NewTask],
    now: datetime,
) -> list[tuple[TaskRecord, bool]]:
    """Insert many children of one parent (fenced once), each unless its key is taken."""
    if not news:
        await _check_held(db, parent_id, parent_fence)
        return []
    rows = await db.fetch("create_steps", *steps_args(parent_id, parent_fence, news, now))
    if not rows:
        await _check_held(db, parent_id, parent_fence)
    if len(rows) != len(news):
        raise BackendError(f"{len(news) - len(rows)} of {len(news)} steps of task "
                           f"{parent_id} were neither created nor found (deleted meanwhile)")
    return [(task_from_row(r), bool(r["created"])) for r in rows]


async def create_signal_wait(
    db: PostgresDatabase, parent_id: str, parent_fence: int, new: NewTask, signal_name: str,
    now: datetime,
) -> tuple[TaskRecord, bool]:
    """Insert a signal wait at its key unless taken, consuming a buffered signal or joining
    the waiters of ``signal_name`` (serialised with send_signal per execution)."""
    row = await db.fetchrow("create_signal_wait",
                            *signal_wait_args(parent_id, parent_fence, new, signal_name, now))
    if row is None:
        await _check_held(db, parent_id, parent_fence)
        raise BackendError(f"signal wait {new.seq} of task {parent_id} was neither created "
                           "nor found (it was deleted meanwhile)")
    return task_from_row(row), bool(row["created"])


async def send_signal(
    db: PostgresDatabase, execution_id: str, name: str, payload: bytes, now: datetime
) -> str | None:
    """Deliver to the oldest live waiter (its id) or keep the signal (""); None when there is
    no such execution."""
    served = await db.fetchval("send_signal", execution_id, name, payload, utc(now))
    return None if served is None else str(served)


async def record_effect(
    db: PostgresDatabase, parent_id: str, parent_fence: int, new: NewTask,
    effect: ExecutionEffect, now: datetime,
) -> tuple[TaskRecord, bool]:
    """Insert a born-completed step and, only if it was created, apply ``effect``."""
    if effect.kind not in _EFFECT_KINDS:
        raise ValueError(f"unknown execution effect {effect.kind!r}")
    if effect.kind == "set_state":
        json.loads(effect.value_json)  # invalid JSON: raises here, nothing written
    rows = await db.fetch("record_effect", *effect_args(parent_id, parent_fence, new, effect,
                                                        now))
    if rows:
        return task_from_row(rows[0]), bool(rows[0]["created"])
    return await _not_inserted(db, parent_id, parent_fence, new), False


async def cache_claim(
    db: PostgresDatabase, key: str, task_id: str, arg_digest: str, ttl_s: float | None,
    now: datetime,
) -> CacheClaim:
    """Look up or take the cache key ``key`` for ``task_id`` (one transaction)."""
    row = await db.fetchrow("cache_claim", key, task_id, arg_digest,
                            None if ttl_s is None else float(ttl_s), utc(now),
                            progress("cache_hit", now, task_id=task_id, key=key))
    assert row is not None  # the function always returns one row
    return CacheClaim(status=row["status"], result=row["result"],
                      owner_task_id=row["owner_task_id"], arg_digest=row["arg_digest"])


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


async def mark_alone(db: PostgresDatabase, task_id: str, fence: int, alone: bool) -> bool:
    """Mark whether a running task's current run is alone on its worker (fenced)."""
    return bool(await db.fetchval("mark_alone", task_id, fence, alone))


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

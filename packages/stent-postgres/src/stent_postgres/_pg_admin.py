"""Inspection, operator overrides, maintenance and dead letters on PostgreSQL.

Single statements like those of ``_pg_ops.py``, except ``replay_dead_letter``, which walks up
the failed callers of the replayed task inside one explicit transaction (an operator call,
not a hot path).
"""

from __future__ import annotations

from datetime import datetime

from stent.errors import BackendError
from stent.records import DeadLetterRecord, ExecutionRecord, TaskRecord

from ._pg_db import PostgresDatabase
from ._pg_rows import (
    dead_letter_from_row,
    execution_from_row,
    progress,
    task_from_row,
    utc,
    utc_or_none,
)

#: States of an execution whose dead letters are not replayed.
_STOPPED = frozenset({"cancelling", "cancelled", "timed_out"})


async def get_execution(db: PostgresDatabase, execution_id: str) -> ExecutionRecord | None:
    """One execution, or None."""
    row = await db.fetchrow("get_execution", execution_id)
    return None if row is None else execution_from_row(row)


async def list_executions(
    db: PostgresDatabase, limit: int, offset: int, state: str | None
) -> list[ExecutionRecord]:
    """Executions, newest first (ties: the later inserted first)."""
    if limit <= 0:
        return []
    rows = await db.fetch("list_executions", state, limit, max(offset, 0))
    return [execution_from_row(r) for r in rows]


async def get_task(db: PostgresDatabase, task_id: str) -> TaskRecord | None:
    """One task, or None."""
    row = await db.fetchrow("get_task", task_id)
    return None if row is None else task_from_row(row)


async def update_task(db: PostgresDatabase, task: TaskRecord) -> int:
    """Write an operator's edit of ``task``; returns the new fence."""
    fence = await db.fetchval(
        "update_task", task.id, task.state, task.worker_id,
        utc_or_none(task.lease_expires_at), utc(task.due_at), task.priority, task.queue,
        list(task.tags), task.retries, task.crash_count,
    )
    if fence is None:
        raise BackendError(f"no task with id {task.id!r}")
    return int(fence)


async def list_tasks_for_execution(db: PostgresDatabase, execution_id: str) -> list[TaskRecord]:
    """Every task of an execution, oldest first."""
    return [task_from_row(r) for r in await db.fetch("list_tasks_for_execution", execution_id)]


async def count(db: PostgresDatabase, query: str, *args: object) -> int:
    """The single integer a ``count_*``/``queue_depth`` query returns."""
    return int(await db.fetchval(query, *args))


def _limit(limit: int | None) -> int | None:
    """A LIMIT for SQL: None is no limit; a negative one takes nothing, as in the reference
    backend (PostgreSQL refuses a negative LIMIT)."""
    return None if limit is None else max(int(limit), 0)


async def cleanup_executions(
    db: PostgresDatabase, older_than: datetime, limit: int | None
) -> int:
    """Delete up to ``limit`` terminal executions finished before the cutoff, oldest first,
    with all their rows."""
    return int(await db.fetchval("cleanup_executions", utc(older_than), _limit(limit)))


async def cleanup_dead_letters(
    db: PostgresDatabase, older_than: datetime, limit: int | None
) -> int:
    """Delete up to ``limit`` dead letters written before the cutoff, oldest first."""
    return int(await db.fetchval("cleanup_dead_letters", utc(older_than), _limit(limit)))


async def cleanup_cache(db: PostgresDatabase, now: datetime, limit: int) -> int:
    """Delete up to ``limit`` cache entries whose result expired before ``now``."""
    return int(await db.fetchval("cleanup_cache", utc(now), _limit(limit)))


async def acquire_maintenance(
    db: PostgresDatabase, name: str, holder: str, until: datetime, now: datetime
) -> bool:
    """Take or renew the maintenance lease ``name`` for ``holder``."""
    return bool(await db.fetchval("acquire_maintenance", name, holder, utc(until), utc(now)))


async def list_dead_letters(db: PostgresDatabase, limit: int) -> list[DeadLetterRecord]:
    """Dead letters, newest first."""
    if limit <= 0:
        return []
    return [dead_letter_from_row(r) for r in await db.fetch("list_dead_letters", limit)]


async def get_dead_letter(db: PostgresDatabase, task_id: str) -> DeadLetterRecord | None:
    """One dead letter, or None."""
    row = await db.fetchrow("get_dead_letter", task_id)
    return None if row is None else dead_letter_from_row(row)


async def discard_dead_letter(db: PostgresDatabase, task_id: str) -> bool:
    """Delete a dead letter; False if there was none."""
    return await db.fetchrow("discard_dead_letter", task_id) is not None


async def replay_dead_letter(
    db: PostgresDatabase, task_id: str, queue: str | None, reset_retries: bool,
    now: datetime, set_queue: bool,
) -> bool:
    """Run a dead-lettered task again, resuming the failed callers above it by replay."""
    async with db.transaction() as tx:
        # A cancelled or timed-out execution stays so. Its row stays locked to the end, so a
        # cancellation running now either committed before (seen here) or waits for this
        # replay, and then cancels the tasks it made pending or waiting again.
        state = await tx.fetchval("lock_execution_for_replay", task_id)
        if state in _STOPPED:
            return False
        # Locks the task (it must still be failed) and takes its dead letter.
        if await tx.fetchrow("take_dead_letter_for_replay", task_id) is None:
            return False
        row = await tx.fetchrow("reset_task_for_replay", task_id, reset_retries, set_queue,
                                queue, utc(now))
        assert row is not None  # locked by the statement above
        execution_id, parent_id = row["execution_id"], row["parent_id"]
        # Callers that failed because of it go back to waiting at the same attempt, so their
        # completed steps are not run again and they await this task's new outcome. The
        # walk goes up (ancestors after descendants would be the opposite of the lock order
        # everywhere else, but each of these rows is failed, so no worker holds or waits for
        # it) and stops at the first caller that did not fail; only reaching the root
        # revives the execution.
        while parent_id is not None:
            above = await tx.fetchrow("revive_ancestor", parent_id)
            if above is None:
                return True
            parent_id = above["parent_id"]
        revived = await tx.fetchval("revive_execution", execution_id,
                                    progress("running", now, replayed_task=task_id))
        if revived is not None:
            # what its failure cancelled is put back as it was
            await tx.fetchval("revive_stopped_tasks", execution_id)
    return True

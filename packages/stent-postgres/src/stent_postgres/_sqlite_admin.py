"""Inspection, operator overrides, maintenance and dead letters on SQLite.

Plain functions of a ``sqlite3.Connection``, run on the connection thread like those of
``_sqlite_ops.py``; the writes among them run inside a group-committed transaction.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from stent.errors import BackendError
from stent.records import (
    TERMINAL_TASK_STATES,
    DeadLetterRecord,
    ExecutionRecord,
    TaskRecord,
)

from ._sqlite_ops import Q
from ._sqlite_rows import (
    dead_letter_from_row,
    epoch,
    epoch_or_none,
    execution_from_row,
    json_list,
    progress_entry,
    task_from_row,
)


def get_execution(db: sqlite3.Connection, execution_id: str) -> ExecutionRecord | None:
    """One execution, or None."""
    row = db.execute(Q["get_execution"], {"id": execution_id}).fetchone()
    return None if row is None else execution_from_row(row)


def list_executions(
    db: sqlite3.Connection, limit: int, offset: int, state: str | None
) -> list[ExecutionRecord]:
    """Executions, newest first (ties: the later inserted first)."""
    if limit <= 0:
        return []
    rows = db.execute(Q["list_executions"], {
        "limit": limit, "offset": max(offset, 0), "state": state,
    })
    return [execution_from_row(r) for r in rows]


def get_task(db: sqlite3.Connection, task_id: str) -> TaskRecord | None:
    """One task, or None."""
    row = db.execute(Q["get_task"], {"id": task_id}).fetchone()
    return None if row is None else task_from_row(row)


def update_task(db: sqlite3.Connection, task: TaskRecord) -> int:
    """Write an operator's edit of ``task``; returns the new fence."""
    row = db.execute(Q["update_task"], {
        "id": task.id,
        "state": task.state,
        "worker_id": task.worker_id,
        "lease_expires_at": epoch_or_none(task.lease_expires_at),
        "due_at": epoch(task.due_at),
        "priority": task.priority,
        "queue": task.queue,
        "tags": json_list(task.tags),
        "retries": task.retries,
        "crash_count": task.crash_count,
    }).fetchone()
    if row is None:
        raise BackendError(f"no task with id {task.id!r}")
    if row["parent_id"] is not None and (
        task.state == "pending" or task.state in TERMINAL_TASK_STATES
    ):
        # Made claimable again, or finished by hand: a parent suspended on it is woken, as
        # by a completion, so that it looks again.
        db.execute(Q["wake_parent"], {"parent_id": row["parent_id"]})
    return int(row["fence"])


def list_tasks_for_execution(db: sqlite3.Connection, execution_id: str) -> list[TaskRecord]:
    """Every task of an execution, oldest first."""
    rows = db.execute(Q["list_tasks_for_execution"], {"execution_id": execution_id})
    return [task_from_row(r) for r in rows]


def count(db: sqlite3.Connection, query: str, **params: object) -> int:
    """The single integer a ``count_*``/``queue_depth`` query returns."""
    return int(db.execute(Q[query], params).fetchone()[0])


def cleanup_executions(db: sqlite3.Connection, older_than: datetime, limit: int | None) -> int:
    """Delete terminal executions finished before the cutoff (the oldest ``limit`` of them,
    when given) with their tasks, dead letters, signals, signal waiters, and the cache
    entries their tasks own without a result."""
    if limit is not None and limit <= 0:
        return 0
    # One transaction holding the write lock: the statements below all see the same set.
    ids = [row[0] for row in db.execute(Q["doomed_executions"], {
        "cutoff": epoch(older_than), "limit": -1 if limit is None else limit,
    })]
    if not ids:
        return 0
    params = {"ids": json_list(ids)}
    for query in ("cleanup_dead_letters_of_executions", "cleanup_unfinished_cache_of_executions",
                  "cleanup_signals", "cleanup_signal_waiters", "cleanup_tasks"):
        db.execute(Q[query], params)
    return int(db.execute(Q["cleanup_executions"], params).rowcount)


def cleanup_dead_letters(db: sqlite3.Connection, older_than: datetime, limit: int | None) -> int:
    """Delete dead letters written before the cutoff (the oldest ``limit``, when given)."""
    if limit is not None and limit <= 0:
        return 0
    return int(db.execute(Q["cleanup_dead_letters"], {
        "cutoff": epoch(older_than), "limit": -1 if limit is None else limit,
    }).rowcount)


def list_dead_letters(db: sqlite3.Connection, limit: int) -> list[DeadLetterRecord]:
    """Dead letters, newest first."""
    if limit <= 0:
        return []
    return [dead_letter_from_row(r) for r in db.execute(Q["list_dead_letters"], {"limit": limit})]


def get_dead_letter(db: sqlite3.Connection, task_id: str) -> DeadLetterRecord | None:
    """One dead letter, or None."""
    row = db.execute(Q["get_dead_letter"], {"task_id": task_id}).fetchone()
    return None if row is None else dead_letter_from_row(row)


def discard_dead_letter(db: sqlite3.Connection, task_id: str) -> bool:
    """Delete a dead letter; False if there was none."""
    return db.execute(Q["discard_dead_letter"], {"task_id": task_id}).fetchone() is not None


def replay_dead_letter(
    db: sqlite3.Connection, task_id: str, queue: str | None, reset_retries: bool,
    now: datetime, set_queue: bool,
) -> bool:
    """Run a dead-lettered task again, resuming the failed callers above it by replay."""
    stopped = db.execute(Q["dead_letter_execution_stopped"], {"task_id": task_id}).fetchone()
    if stopped is not None:
        return False  # a cancelled or timed-out execution stays so
    if db.execute(Q["take_dead_letter_for_replay"], {"task_id": task_id}).fetchone() is None:
        return False
    row = db.execute(Q["reset_task_for_replay"], {
        "task_id": task_id, "reset_retries": reset_retries, "set_queue": set_queue,
        "queue": queue, "now": epoch(now),
    }).fetchone()
    execution_id, parent_id = row["execution_id"], row["parent_id"]
    # Callers that failed because of it go back to waiting at the same attempt, so their
    # completed steps are not run again and they await this task's new outcome. The walk
    # stops at the first caller that did not fail; only reaching the root revives the
    # execution.
    while parent_id is not None:
        above = db.execute(Q["revive_ancestor"], {"id": parent_id}).fetchone()
        if above is None:
            return True
        parent_id = above["parent_id"]
    revived = db.execute(Q["revive_execution"], {
        "execution_id": execution_id,
        "entry": progress_entry("running", now, replayed_task=task_id),
    }).rowcount
    if revived:
        db.execute(Q["revive_stopped_tasks"], {"execution_id": execution_id})
    return True

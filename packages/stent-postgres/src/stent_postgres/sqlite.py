"""``SQLiteBackend``: the Stent backend contract on one SQLite file (or ``:memory:``).

Every operation is one transaction; every rule (fencing, insert-if-absent on step keys,
state guards) is enforced in SQL inside it. Writes from all coroutines of the process are
group-committed (``_sqlite_db.py``); each ``BEGIN IMMEDIATE`` transaction takes the file's
write lock, so several processes can share one file safely (WAL mode). The SQL lives in
``queries/sqlite.sql`` and the schema in ``schema/sqlite/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from functools import partial

from stent.records import (
    CacheClaim,
    ClaimFilter,
    DeadLetterRecord,
    ExecutionEffect,
    ExecutionRecord,
    Lease,
    NewExecution,
    NewTask,
    StepRecord,
    TaskOutcome,
    TaskRecord,
)

from . import _sqlite_admin as admin
from . import _sqlite_ops as ops
from ._sqlite_db import SQLiteDatabase


class SQLiteBackend:
    """Durable storage for Stent in SQLite.

    One connection per backend object, opened on first use; call :meth:`init_db` once
    before anything else to create or migrate the schema (an operation on a database
    without the tables raises ``BackendError`` saying so).

    Args:
        path: database file, or ``":memory:"`` for a private in-memory database (lost on
            :meth:`close`).
        busy_timeout: seconds to wait for another process's write lock before failing
            with ``BackendError``.

    Attributes:
        stats: ``{"batches", "commits", "operations"}``: write transactions attempted and
            committed, and the write operations they carried (group commit puts many
            operations in one transaction).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self._db = SQLiteDatabase(path, busy_timeout)
        self.stats = self._db.stats

    @property
    def path(self) -> str:
        """The database path as given."""
        return self._db.path

    @property
    def in_flight(self) -> int:
        """Database calls under way right now (the testing kit's clock waits for them)."""
        return self._db.in_flight

    def __repr__(self) -> str:
        return f"SQLiteBackend({self._db.path!r})"

    # -- lifecycle -----------------------------------------------------------------------
    async def init_db(self) -> None:
        """Create or migrate the schema.

        Idempotent and safe when many processes call it at once: migrations run inside
        ``BEGIN IMMEDIATE`` and the recorded version is re-read under that lock.

        Raises:
            SchemaVersionError: the database was migrated by a newer stent-postgres.
        """
        await self._db.migrate()

    async def close(self) -> None:
        """Finish queued writes and close the connection (a later call reopens it)."""
        await self._db.close()

    # -- engine operations ---------------------------------------------------------------
    async def create_execution(self, new: NewExecution, now: datetime) -> tuple[str, bool]:
        """Insert an execution and its root task unless the id or idempotency key is taken.

        Returns:
            ``(execution_id, created)``; the id of the existing execution when not created.
        """
        return await self._db.write(partial(ops.create_execution, new=new, now=now))

    async def claim(
        self, worker_id: str, claim_filter: ClaimFilter, limit: int, now: datetime,
        lease_until: datetime,
    ) -> list[TaskRecord]:
        """Lease up to ``limit`` due, eligible tasks by priority, due time, then age.

        Pending tasks due by ``now`` and running tasks whose lease expired before ``now``
        (a crash recovery: ``crash_count`` + 1) are eligible; timers (``sleep`` and
        ``signal`` tasks) whatever the filter's queues and tags. Each claimed task's fence is
        bumped; a claimed root task's pending execution becomes running.

        Returns:
            The claimed tasks in claim order.
        """
        if limit <= 0:
            return []
        return await self._db.write(partial(
            ops.claim, worker_id=worker_id, claim_filter=claim_filter, limit=limit, now=now,
            lease_until=lease_until,
        ))

    async def create_step(
        self, parent_id: str, parent_fence: int, new: NewTask, now: datetime,
        lease: Lease | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Insert a child task at its step key (parent, attempt, seq) unless one is there.

        Args:
            parent_id: the calling task, which must be running at ``parent_fence``.
            parent_fence: the caller's fence token.
            new: the child.
            now: the engine's time.
            lease: if given, a pending child is born running under this lease (fence 1).

        Returns:
            ``(task, created)``; the existing row when the key was taken.

        Raises:
            LeaseLostError: the parent is no longer held at ``parent_fence``.
        """
        return await self._db.write(partial(
            ops.create_step, parent_id=parent_id, parent_fence=parent_fence, new=new, now=now,
            lease=lease,
        ))

    async def create_steps(
        self, parent_id: str, parent_fence: int, news: Sequence[NewTask], now: datetime
    ) -> list[tuple[TaskRecord, bool]]:
        """Insert many children of one parent at their step keys, in one transaction.

        The parent's fence is checked once; every key not taken is inserted (one
        ``executemany``), a taken key returns its existing row.

        Returns:
            ``(task, created)`` per child, in input order.

        Raises:
            LeaseLostError: the parent is no longer held at ``parent_fence``, or its
                execution is no longer live.
        """
        return await self._db.write(partial(
            ops.create_steps, parent_id=parent_id, parent_fence=parent_fence, news=list(news),
            now=now,
        ))

    async def create_signal_wait(
        self, parent_id: str, parent_fence: int, new: NewTask, signal_name: str, now: datetime
    ) -> tuple[TaskRecord, bool]:
        """See :meth:`stent.backend.Backend.create_signal_wait`."""
        return await self._db.write(partial(
            ops.create_signal_wait, parent_id=parent_id, parent_fence=parent_fence, new=new,
            signal_name=signal_name, now=now,
        ))

    async def send_signal(
        self, execution_id: str, name: str, payload: bytes, now: datetime
    ) -> str | None:
        """See :meth:`stent.backend.Backend.send_signal`."""
        return await self._db.write(partial(
            ops.send_signal, execution_id=execution_id, name=name, payload=payload, now=now,
        ))

    async def record_effect(
        self, parent_id: str, parent_fence: int, new: NewTask, effect: ExecutionEffect,
        now: datetime,
    ) -> tuple[TaskRecord, bool]:
        """See :meth:`stent.backend.Backend.record_effect`.

        Raises:
            ValueError: an unknown effect kind, invalid JSON, or a name that cannot be a
                JSON key path (a double quote, backslash or control character in it).
        """
        return await self._db.write(partial(
            ops.record_effect, parent_id=parent_id, parent_fence=parent_fence, new=new,
            effect=effect, now=now,
        ))

    async def cache_claim(
        self, key: str, task_id: str, arg_digest: str, ttl_s: float | None, now: datetime
    ) -> CacheClaim:
        """See :meth:`stent.backend.Backend.cache_claim`."""
        return await self._db.write(partial(
            ops.cache_claim, key=key, task_id=task_id, arg_digest=arg_digest, ttl_s=ttl_s,
            now=now,
        ))

    async def cleanup_cache(self, now: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` cache entries whose result expired before ``now``."""
        return await self._db.write(partial(ops.cleanup_cache, now=now, limit=limit))

    async def acquire_maintenance(
        self, name: str, holder: str, until: datetime, now: datetime
    ) -> bool:
        """Take or renew the maintenance lease ``name`` for ``holder`` until ``until``.

        Returns:
            True if it was free, expired before ``now`` or already held by ``holder``.
        """
        return await self._db.write(partial(
            ops.acquire_maintenance, name=name, holder=holder, until=until, now=now,
        ))

    async def load_steps(self, parent_id: str, attempt: int) -> list[StepRecord]:
        """Every recorded child of ``parent_id`` at ``attempt``, by sequence number."""
        return await self._db.read(partial(ops.load_steps, parent_id=parent_id, attempt=attempt))

    async def complete_task(
        self, task_id: str, fence: int, result: bytes, now: datetime
    ) -> bool:
        """Record a task's result; wake its suspended parent or complete its execution.

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await self._db.write(partial(
            ops.complete_task, task_id=task_id, fence=fence, result=result, now=now,
        ))

    async def fail_task(
        self, task_id: str, fence: int, error: bytes, now: datetime,
        dead_letter_reason: str | None,
    ) -> bool:
        """Record a final failure, dead-lettered when ``dead_letter_reason`` is given.

        Wakes a suspended parent; fails the execution of a root task.

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await self._db.write(partial(
            ops.fail_task, task_id=task_id, fence=fence, error=error, now=now,
            dead_letter_reason=dead_letter_reason,
        ))

    async def retry_task(
        self, task_id: str, fence: int, error: bytes, due_at: datetime, now: datetime
    ) -> bool:
        """Schedule the next attempt: pending at ``due_at``, ``attempt`` and ``retries`` + 1.

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await self._db.write(partial(
            ops.retry_task, task_id=task_id, fence=fence, error=error, due_at=due_at, now=now,
        ))

    async def mark_alone(self, task_id: str, fence: int, alone: bool) -> bool:
        """Record whether a running task's current run is the only one on its worker: a
        take-over charges a task with ``crash_count`` > 0 only if its run was marked alone.

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await self._db.write(partial(ops.mark_alone, task_id=task_id, fence=fence,
                                            alone=alone))

    async def release_task(self, task_id: str, fence: int, now: datetime) -> bool:
        """Give a running task back: pending, same attempt, lease dropped.

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await self._db.write(partial(ops.release_task, task_id=task_id, fence=fence,
                                            now=now))

    async def suspend_task(
        self, task_id: str, fence: int, awaited: Sequence[str], now: datetime
    ) -> bool:
        """Drop the lease of a task that waits on ``awaited`` children.

        The task becomes ``waiting``, or ``pending`` straight away if one of the children
        has already finished (checked in the same transaction: no lost wake-up).

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await self._db.write(partial(
            ops.suspend_task, task_id=task_id, fence=fence, awaited=list(awaited), now=now,
        ))

    async def renew_leases(
        self, worker_id: str, held: Sequence[tuple[str, int]], lease_until: datetime
    ) -> set[str]:
        """Extend the leases of ``(task_id, fence)`` pairs held by ``worker_id``.

        Returns:
            The ids no longer held (stale fence, not running, or another worker's).
        """
        if not held:
            return set()
        return await self._db.write(partial(
            ops.renew_leases, worker_id=worker_id, held=list(held), lease_until=lease_until,
        ))

    async def cancel_execution(self, execution_id: str, error: bytes, now: datetime) -> str | None:
        """See :meth:`stent.backend.Backend.cancel_execution`."""
        return await self._db.write(partial(ops.cancel_execution, execution_id=execution_id,
                                            error=error, now=now))

    async def cancel_task(self, task_id: str, fence: int, now: datetime) -> bool:
        """See :meth:`stent.backend.Backend.cancel_task`."""
        return await self._db.write(partial(ops.cancel_task, task_id=task_id, fence=fence,
                                            now=now))

    async def expire_executions(self, error: bytes, now: datetime, limit: int = 100) -> list[str]:
        """See :meth:`stent.backend.Backend.expire_executions`."""
        return await self._db.write(partial(ops.expire_executions, error=error, now=now,
                                            limit=limit))

    async def get_outcomes(self, task_ids: Sequence[str]) -> list[TaskOutcome]:
        """Outcomes of those of ``task_ids`` that are finished, in the order given."""
        if not task_ids:
            return []
        return await self._db.read(partial(ops.get_outcomes, task_ids=list(task_ids)))

    # -- inspection ----------------------------------------------------------------------
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """One execution, or None."""
        return await self._db.read(partial(admin.get_execution, execution_id=execution_id))

    async def list_executions(
        self, limit: int = 10, offset: int = 0, state: str | None = None
    ) -> list[ExecutionRecord]:
        """Executions, newest first, optionally only those in ``state``."""
        return await self._db.read(partial(
            admin.list_executions, limit=limit, offset=offset, state=state,
        ))

    async def get_task(self, task_id: str) -> TaskRecord | None:
        """One task (a detached, mutable record), or None."""
        return await self._db.read(partial(admin.get_task, task_id=task_id))

    async def update_task(self, task: TaskRecord) -> None:
        """Operator override: write the task's state, worker, lease, due time, routing and
        retry counters, bumping its fence so that any worker holding it is fenced out.

        ``task.fence`` is set to the new fence.

        Raises:
            BackendError: there is no task with this id.
        """
        task.fence = await self._db.write(partial(admin.update_task, task=task))

    async def list_tasks_for_execution(self, execution_id: str) -> list[TaskRecord]:
        """Every task of an execution, oldest first."""
        return await self._db.read(partial(
            admin.list_tasks_for_execution, execution_id=execution_id,
        ))

    async def count_tasks(self, queue: str | None = None, state: str | None = None) -> int:
        """Count tasks, optionally only of ``queue`` and/or in ``state``."""
        return await self._db.read(partial(admin.count, query="count_tasks", queue=queue,
                                           state=state))

    async def count_executions(self, state: str | None = None) -> int:
        """Count executions, optionally only those in ``state``."""
        return await self._db.read(partial(admin.count, query="count_executions", state=state))

    async def queue_depth(self, queue: str | None = None) -> int:
        """Pending tasks in ``queue`` (None: the default queue)."""
        return await self._db.read(partial(admin.count, query="queue_depth", queue=queue))

    # -- maintenance and dead letters ----------------------------------------------------
    async def cleanup_executions(self, older_than: datetime, limit: int | None = None) -> int:
        """Delete terminal executions finished before ``older_than`` with all their rows.

        Their tasks, dead letters, signals and signal waiters go with them, and so do the
        cache entries their tasks own without a result; a stored result stays until it
        expires (:meth:`cleanup_cache`).

        Args:
            older_than: the cutoff; a naive datetime is local time.
            limit: at most this many executions (the longest finished first); None: all.

        Returns:
            How many executions were deleted.
        """
        return await self._db.write(partial(admin.cleanup_executions, older_than=older_than,
                                            limit=limit))

    async def cleanup_dead_letters(self, older_than: datetime, limit: int | None = None) -> int:
        """Delete dead letters written before ``older_than`` (naive: local time), the
        oldest ``limit`` of them when given.

        Returns:
            How many were deleted.
        """
        return await self._db.write(partial(admin.cleanup_dead_letters, older_than=older_than,
                                            limit=limit))

    async def list_dead_letters(self, limit: int = 50) -> list[DeadLetterRecord]:
        """Dead letters, newest first."""
        return await self._db.read(partial(admin.list_dead_letters, limit=limit))

    async def get_dead_letter(self, task_id: str) -> DeadLetterRecord | None:
        """One dead letter, or None."""
        return await self._db.read(partial(admin.get_dead_letter, task_id=task_id))

    async def replay_dead_letter(
        self, task_id: str, *, queue: str | None, reset_retries: bool, now: datetime,
        set_queue: bool = False,
    ) -> bool:
        """Run a dead-lettered task again with a fresh attempt.

        The failed callers above it go back to ``waiting`` (they resume by replay), and if
        that reaches the root task, the failed execution goes back to ``running``.

        Args:
            task_id: the dead-lettered task.
            queue: the queue to move it to, when ``set_queue``.
            reset_retries: start its retry count from zero.
            now: when it becomes due.
            set_queue: whether to move it to ``queue``.

        Returns:
            False if there is no such entry or its task is no longer failed.
        """
        return await self._db.write(partial(
            admin.replay_dead_letter, task_id=task_id, queue=queue,
            reset_retries=reset_retries, now=now, set_queue=set_queue,
        ))

    async def discard_dead_letter(self, task_id: str) -> bool:
        """Delete a dead letter; False if there was none."""
        return await self._db.write(partial(admin.discard_dead_letter, task_id=task_id))


__all__ = ["SQLiteBackend"]

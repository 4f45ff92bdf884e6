"""``PostgresBackend``: the Stent backend contract on PostgreSQL (asyncpg).

Every operation is one transaction, and (but for two rare race fallbacks and the operator's
``replay_dead_letter``) one statement: a chain of CTEs in ``queries/postgres.sql``, or a call
to a PL/pgSQL function of the schema where later statements need a fresh snapshot, that
enforces fencing, insert-if-absent on step keys and the state rules in its WHERE clauses.
Cancellation and deadlines (``cancel_execution``, ``expire_executions``) take the locks that
keep a cancelling execution from being left unsettled by racing siblings: see
``schema/postgres/0002_cancellation.sql``.
Signals (``create_signal_wait``, ``send_signal``) of one execution take turns on an advisory
lock keyed on it, and cache keys are rows locked by their claimers: see
``schema/postgres/0003_signals_cache.sql``.
Claims take rows with ``FOR NO KEY UPDATE SKIP LOCKED`` from partial indexes on claimable
rows; ``max_concurrent`` is a counter row per capped function, locked and updated in the
same statement as the slots it hands out. The schema lives in ``schema/postgres/``.

Times come from the engine (never from the database's ``now()``), so a ``FakeClock`` drives
this backend exactly as it drives the others.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

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

from . import _pg_admin as admin
from . import _pg_ops as ops
from ._pg_db import PostgresDatabase

if TYPE_CHECKING:
    from .listen import PostgresNotifications

_CHANNEL_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,40}")


class PostgresBackend:
    """Durable storage for Stent in PostgreSQL.

    The connection pool is created on first use (or by :meth:`init_db`); call
    :meth:`init_db` once before anything else to create or migrate the schema.

    Args:
        dsn: a libpq-style URI, ``postgresql://user:password@host:5432/db``; query
            parameters such as ``?sslmode=require`` are honoured. Special characters in the
            user name or password must be percent-encoded.
        min_pool_size: connections opened with the pool and kept open.
        max_pool_size: most connections this backend opens at once.
        schema: the schema holding Stent's tables (set as ``search_path`` on every pooled
            connection, whose ``application_name`` is ``stent:<schema>``; created by
            :meth:`init_db` if missing). A plain identifier.
        connect_timeout: seconds to wait for a connection to be established.

    Raises:
        ValueError: an invalid schema name or pool size.

    Attributes:
        stats: ``{"statements", "transactions"}``: statements sent (each one round trip once
            prepared on its connection) and explicit transactions, for tests and tuning.

    Every method raises :class:`~stent.errors.BackendError` when the database cannot be
    reached or fails; its message shows the DSN with the password masked.
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_pool_size: int = 2,
        max_pool_size: int = 10,
        schema: str = "public",
        connect_timeout: float = 10.0,
    ) -> None:
        self._db = PostgresDatabase(dsn, min_size=min_pool_size, max_size=max_pool_size,
                                    schema=schema, connect_timeout=connect_timeout)
        self.stats = self._db.stats

    @property
    def schema(self) -> str:
        """The schema Stent's tables live in."""
        return self._db.schema

    @property
    def dsn(self) -> str:
        """The DSN as given, password included (for handing to another process); log
        :attr:`masked_dsn` instead."""
        return self._db.dsn.text

    @property
    def masked_dsn(self) -> str:
        """The DSN with its password masked, safe to log."""
        return self._db.dsn.masked

    @property
    def in_flight(self) -> int:
        """Database calls under way right now (the testing kit's clock waits for them)."""
        return self._db.in_flight

    def __repr__(self) -> str:
        return f"PostgresBackend({self._db.dsn.masked!r}, schema={self._db.schema!r})"

    def default_notification_backend(self) -> PostgresNotifications:
        """Wake-ups over this database's ``LISTEN/NOTIFY`` (used by ``Stent`` when no
        notification backend is given), on channels of this schema only."""
        from .listen import PostgresNotifications

        return PostgresNotifications(self._db.dsn.text, prefix=self.channel_prefix,
                                     mask=lambda _dsn: self._db.dsn.masked)

    @property
    def channel_prefix(self) -> str:
        """Prefix of this schema's notification channels: ``stent_<schema>`` (lower case,
        shortened with a digest when the schema name is long)."""
        prefix = f"stent_{self._db.schema.lower()}"
        if not _CHANNEL_PREFIX.fullmatch(prefix) or self._db.schema != self._db.schema.lower():
            digest = hashlib.sha256(self._db.schema.encode()).hexdigest()[:8]
            prefix = f"{prefix[:32]}_{digest}"
        return prefix

    # -- lifecycle -----------------------------------------------------------------------
    async def init_db(self) -> None:
        """Create the schema (if missing) and its tables, or migrate them.

        Idempotent and safe when many workers start at once: migrations run in one
        transaction under an advisory lock, and the recorded version is read under it.

        Raises:
            SchemaVersionError: the schema was migrated by a newer stent-postgres.
            BackendError: the database cannot be reached, or refused a statement.
        """
        await self._db.migrate()

    async def close(self) -> None:
        """Close the pool once the calls in flight are done (a later call reopens it)."""
        await self._db.close()

    # -- engine operations ---------------------------------------------------------------
    async def create_execution(self, new: NewExecution, now: datetime) -> tuple[str, bool]:
        """Insert an execution and its root task unless the id or idempotency key is taken.

        Returns:
            ``(execution_id, created)``; the id of the existing execution when not created.
        """
        return await ops.create_execution(self._db, new, now)

    async def claim(
        self, worker_id: str, claim_filter: ClaimFilter, limit: int, now: datetime,
        lease_until: datetime,
    ) -> list[TaskRecord]:
        """Lease up to ``limit`` due, eligible tasks by priority, due time, then age.

        Pending tasks due by ``now`` and running tasks whose lease expired before ``now``
        (a crash recovery: ``crash_count`` + 1) are eligible; a task of a function at its
        ``max_concurrent`` cap is not. Each claimed task's fence is bumped; a claimed root
        task's pending execution becomes running. Rows another claimer is taking at the same
        moment are skipped.

        The cap counts the function's running tasks whose lease is live (one whose lease
        expired stops counting, and counts again if its worker renews it). It is kept in a
        counter row per function, locked by the claim, so racing claimers never exceed it.
        Two fine points, where the in-memory reference counts differently: tasks of one
        function are expected to share one cap (the engine stores the decorator's value on
        each; with mixed caps each candidate is held to its own cap by rank), and a task of
        the same name dispatched without a cap (before the cap was added) does not count.

        Returns:
            The claimed tasks in claim order.
        """
        if limit <= 0:
            return []
        return await ops.claim(self._db, worker_id, claim_filter, limit, now, lease_until)

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
        return await ops.create_step(self._db, parent_id, parent_fence, new, now, lease)

    async def create_steps(
        self, parent_id: str, parent_fence: int, news: Sequence[NewTask], now: datetime
    ) -> list[tuple[TaskRecord, bool]]:
        """Insert many children of one parent (a fan-out) in one statement: fenced on the
        parent once, each child at its step key unless one is there.

        Returns:
            ``(task, created)`` per child, in the order of ``news``; ``task`` is the existing
            row when its key was taken.

        Raises:
            LeaseLostError: the parent is no longer held at ``parent_fence``, or its execution
                is not live (nothing is written).
        """
        return await ops.create_steps(self._db, parent_id, parent_fence, news, now)

    async def create_signal_wait(
        self, parent_id: str, parent_fence: int, new: NewTask, signal_name: str, now: datetime
    ) -> tuple[TaskRecord, bool]:
        """Insert a ``signal`` step at its step key unless one is there (fenced on the parent).

        A created wait consumes the oldest unconsumed signal ``signal_name`` of the execution,
        if there is one (born ``completed`` with its payload as result); otherwise it is born
        as ``new`` says and joins the waiters of ``signal_name``. Serialised with
        :meth:`send_signal` per execution, so no signal is lost between the check and the
        insert.

        Returns:
            ``(task, created)``; the existing row (nothing consumed) when the key was taken.

        Raises:
            LeaseLostError: the parent is no longer held at ``parent_fence``, or its execution
                is not live.
        """
        return await ops.create_signal_wait(self._db, parent_id, parent_fence, new,
                                            signal_name, now)

    async def send_signal(
        self, execution_id: str, name: str, payload: bytes, now: datetime
    ) -> str | None:
        """Send signal ``name`` to an execution: the oldest of its waiters of that name still
        ``pending`` or ``waiting`` consumes it at once (completed with ``payload``, its parent
        woken); otherwise it is kept, in order, for the next wait.

        Returns:
            The id of the waiter served, ``""`` if the signal was kept, None (nothing
            written) if there is no such execution.
        """
        return await ops.send_signal(self._db, execution_id, name, payload, now)

    async def record_effect(
        self, parent_id: str, parent_fence: int, new: NewTask, effect: ExecutionEffect,
        now: datetime,
    ) -> tuple[TaskRecord, bool]:
        """Insert a born-completed step (as :meth:`create_step`) and, only if it was created,
        apply ``effect`` to its execution's counters or custom state in the same statement.

        Raises:
            ValueError: an unknown effect kind, or a ``set_state`` value that is not JSON
                (nothing written).
            LeaseLostError: the parent is no longer held at ``parent_fence``, or its execution
                is not live.
        """
        return await ops.record_effect(self._db, parent_id, parent_fence, new, effect, now)

    async def cache_claim(
        self, key: str, task_id: str, arg_digest: str, ttl_s: float | None, now: datetime
    ) -> CacheClaim:
        """Look up or take the idempotency/cache key ``key`` for ``task_id`` (one
        transaction): ``hit`` (a live result; ``cache_hit`` logged on the caller's
        execution), ``conflict`` (a live result for other arguments), ``busy`` (another
        unfinished task owns it) or ``owner``. Two concurrent claims of one key yield one
        owner. The owner's :meth:`complete_task` stores its result, expiring ``ttl_s``
        seconds later (None: never)."""
        return await ops.cache_claim(self._db, key, task_id, arg_digest, ttl_s, now)

    async def cleanup_cache(self, now: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` cache entries whose result expired before ``now``.

        Returns:
            How many were deleted.
        """
        return await admin.cleanup_cache(self._db, now, limit)

    async def acquire_maintenance(
        self, name: str, holder: str, until: datetime, now: datetime
    ) -> bool:
        """Take or renew the maintenance lease ``name`` for ``holder`` until ``until``.

        Returns:
            True if it was free, expired before ``now``, or already ``holder``'s.
        """
        return await admin.acquire_maintenance(self._db, name, holder, until, now)

    async def load_steps(self, parent_id: str, attempt: int) -> list[StepRecord]:
        """Every recorded child of ``parent_id`` at ``attempt``, by sequence number."""
        return await ops.load_steps(self._db, parent_id, attempt)

    async def complete_task(
        self, task_id: str, fence: int, result: bytes, now: datetime
    ) -> bool:
        """Record a task's result; wake its suspended parent or complete its execution; store
        the result in the cache entry the task owns, if any (see :meth:`cache_claim`).

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await ops.complete_task(self._db, task_id, fence, result, now)

    async def fail_task(
        self, task_id: str, fence: int, error: bytes, now: datetime,
        dead_letter_reason: str | None,
    ) -> bool:
        """Record a final failure, dead-lettered when ``dead_letter_reason`` is given.

        Wakes a suspended parent; fails the execution of a root task.

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await ops.fail_task(self._db, task_id, fence, error, now, dead_letter_reason)

    async def retry_task(
        self, task_id: str, fence: int, error: bytes, due_at: datetime, now: datetime
    ) -> bool:
        """Schedule the next attempt: pending at ``due_at``, ``attempt`` and ``retries`` + 1
        (cancelled instead when its execution is cancelling or finished).

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await ops.retry_task(self._db, task_id, fence, error, due_at, now)

    async def mark_alone(self, task_id: str, fence: int, alone: bool) -> bool:
        """Record whether a running task's current run is the only one on its worker: a
        take-over charges a task with ``crash_count`` > 0 only if its run was marked alone.

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await ops.mark_alone(self._db, task_id, fence, alone)

    async def release_task(self, task_id: str, fence: int, now: datetime) -> bool:
        """Give a running task back: pending, same attempt, lease dropped (cancelled instead
        when its execution is not live).

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await ops.release_task(self._db, task_id, fence, now)

    async def suspend_task(
        self, task_id: str, fence: int, awaited: Sequence[str], now: datetime
    ) -> bool:
        """Drop the lease of a task that waits on ``awaited`` children.

        The task becomes ``waiting``, or ``pending`` straight away if one of the children
        has already finished (checked in the same statement: no lost wake-up); it is
        cancelled instead when its execution is cancelling or finished.

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await ops.suspend_task(self._db, task_id, fence, awaited, now)

    async def renew_leases(
        self, worker_id: str, held: Sequence[tuple[str, int]], lease_until: datetime
    ) -> set[str]:
        """Extend the leases of ``(task_id, fence)`` pairs held by ``worker_id``.

        A held task of an execution that is cancelling or finished is cancelled instead (the
        heartbeat is how a remote worker learns of a cancellation) and reported lost.

        Returns:
            The ids no longer held (stale fence, not running, another worker's, or
            cancelled here).
        """
        if not held:
            return set()
        return await ops.renew_leases(self._db, worker_id, held, lease_until)

    async def cancel_execution(self, execution_id: str, error: bytes, now: datetime) -> str | None:
        """Cancel an execution: a pending or running one becomes ``cancelling`` (with
        ``error``) and its pending and waiting tasks ``cancelled``; it becomes ``cancelled``
        as soon as none of its tasks runs (at once if none does). A finished one is left
        alone.

        From then on its tasks are never claimed, start no step (``LeaseLostError``), and
        are cancelled by a heartbeat, a retry, a release or a suspension; their completion
        or failure is recorded but never finishes the execution.

        Returns:
            The execution's state afterwards, or None if there is no such execution.
        """
        return await ops.cancel_execution(self._db, execution_id, error, now)

    async def cancel_task(self, task_id: str, fence: int, now: datetime) -> bool:
        """Record that a running task stopped because its execution is being cancelled:
        ``cancelled``, its suspended parent woken, its slot given back; the execution becomes
        ``cancelled`` once none of its tasks runs.

        Returns:
            False, changing nothing, if the fence is stale or the task is not running.
        """
        return await ops.cancel_task(self._db, task_id, fence, now)

    async def expire_executions(self, error: bytes, now: datetime, limit: int = 100) -> list[str]:
        """Time out up to ``limit`` pending or running executions whose deadline passed
        before ``now`` (most overdue first): ``timed_out`` with ``error``, every unfinished
        task (running ones too) cancelled. Also cancel the running tasks of cancelling or
        finished executions whose lease expired (their workers died), settling them.

        Returns:
            The ids of the executions timed out.
        """
        return await ops.expire_executions(self._db, error, now, limit)

    async def get_outcomes(self, task_ids: Sequence[str]) -> list[TaskOutcome]:
        """Outcomes of those of ``task_ids`` that are finished, in the order given."""
        if not task_ids:
            return []
        return await ops.get_outcomes(self._db, task_ids)

    # -- inspection ----------------------------------------------------------------------
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """One execution, or None."""
        return await admin.get_execution(self._db, execution_id)

    async def list_executions(
        self, limit: int = 10, offset: int = 0, state: str | None = None
    ) -> list[ExecutionRecord]:
        """Executions, newest first, optionally only those in ``state``."""
        return await admin.list_executions(self._db, limit, offset, state)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        """One task (a detached, mutable record), or None."""
        return await admin.get_task(self._db, task_id)

    async def update_task(self, task: TaskRecord) -> None:
        """Operator override: write the task's state, worker, lease, due time, routing and
        retry counters, bumping its fence so that any worker holding it is fenced out.

        ``task.fence`` is set to the new fence. Naive datetimes are read as local time.

        Raises:
            BackendError: there is no task with this id.
        """
        task.fence = await admin.update_task(self._db, task)

    async def list_tasks_for_execution(self, execution_id: str) -> list[TaskRecord]:
        """Every task of an execution, oldest first."""
        return await admin.list_tasks_for_execution(self._db, execution_id)

    async def count_tasks(self, queue: str | None = None, state: str | None = None) -> int:
        """Count tasks, optionally only of ``queue`` and/or in ``state``."""
        return await admin.count(self._db, "count_tasks", queue, state)

    async def count_executions(self, state: str | None = None) -> int:
        """Count executions, optionally only those in ``state``."""
        return await admin.count(self._db, "count_executions", state)

    async def database_time(self) -> datetime:
        """The database server's clock (workers measure their offset from it, SPEC §10)."""
        value = await self._db.fetchval("database_time")
        return cast(datetime, value).astimezone(UTC)

    async def queue_depth(self, queue: str | None = None) -> int:
        """Pending tasks in ``queue`` (None: the default queue)."""
        return await admin.count(self._db, "queue_depth", queue)

    # -- maintenance and dead letters ----------------------------------------------------
    async def cleanup_executions(self, older_than: datetime, limit: int | None = None) -> int:
        """Delete terminal executions finished before ``older_than`` (oldest first, at most
        ``limit`` when given) with all their rows: tasks, dead letters, signals, signal
        waiters, and cache entries their tasks own without a result (a stored result
        outlives its execution until it expires).

        A naive ``older_than`` is read as local time (``datetime.now() - timedelta(...)``).

        Returns:
            How many executions were deleted.
        """
        return await admin.cleanup_executions(self._db, older_than, limit)

    async def cleanup_dead_letters(self, older_than: datetime, limit: int | None = None) -> int:
        """Delete dead letters written before ``older_than`` (naive: local time), oldest
        first, at most ``limit`` when given.

        Returns:
            How many were deleted.
        """
        return await admin.cleanup_dead_letters(self._db, older_than, limit)

    async def list_dead_letters(self, limit: int = 50) -> list[DeadLetterRecord]:
        """Dead letters, newest first."""
        return await admin.list_dead_letters(self._db, limit)

    async def get_dead_letter(self, task_id: str) -> DeadLetterRecord | None:
        """One dead letter, or None."""
        return await admin.get_dead_letter(self._db, task_id)

    async def replay_dead_letter(
        self, task_id: str, *, queue: str | None, reset_retries: bool, now: datetime,
        set_queue: bool = False,
    ) -> bool:
        """Run a dead-lettered task again with a fresh attempt.

        The failed callers above it go back to ``waiting`` (they resume by replay), and if
        that reaches the root task, the failed execution goes back to ``running``. A task
        of a cancelling, cancelled or timed-out execution is not replayed.

        Args:
            task_id: the dead-lettered task.
            queue: the queue to move it to, when ``set_queue``.
            reset_retries: start its retry count from zero.
            now: when it becomes due.
            set_queue: whether to move it to ``queue``.

        Returns:
            False if there is no such entry, its task is no longer failed, or its execution
            was cancelled or timed out.
        """
        return await admin.replay_dead_letter(self._db, task_id, queue, reset_retries, now,
                                              set_queue)

    async def discard_dead_letter(self, task_id: str) -> bool:
        """Delete a dead letter; False if there was none."""
        return await admin.discard_dead_letter(self._db, task_id)


__all__ = ["PostgresBackend"]

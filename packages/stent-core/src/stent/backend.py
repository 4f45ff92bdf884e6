"""The storage and notification seams.

A backend is a set of intent-level operations. Each is one transaction and enforces its own
invariants (fencing, insert-if-absent on step keys, state guards) inside the store, so that no
correctness rule depends on a read-modify-write in Python. Times always come in from the
engine's clock; a backend never reads its own clock for a decision.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from .records import (
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


@runtime_checkable
class Backend(Protocol):
    """Durable storage for executions, tasks and dead letters."""

    # -- lifecycle -------------------------------------------------------------------------
    async def init_db(self) -> None:
        """Create or migrate the schema; idempotent and safe when many workers start at once."""

    async def close(self) -> None:
        """Release connections."""

    # -- engine operations (each one transaction) -------------------------------------------
    async def create_execution(self, new: NewExecution, now: datetime) -> tuple[str, bool]:
        """Insert an execution and its root task, unless one with the same id or idempotency
        key exists. Returns ``(execution_id, created)``."""

    async def claim(
        self, worker_id: str, claim_filter: ClaimFilter, limit: int, now: datetime,
        lease_until: datetime,
    ) -> list[TaskRecord]:
        """Lease up to ``limit`` due, eligible tasks (pending ones, and running ones whose lease
        expired), by priority then due time. Every claim bumps the task's fence. Taking over
        a running task is a crash recovery, charged to it (``crash_count`` + 1) unless it has
        an unfinished step at its current attempt (a child with ``parent_attempt`` equal to
        its ``attempt`` that is not completed, failed or cancelled): then it was only
        awaiting that step when its worker died, and its count stays. A task already charged
        (``crash_count`` > 0) is charged again only if its worker marked the run that died
        alone (:meth:`mark_alone`); every claim clears that mark. A root task's
        execution becomes ``running``. Built-in timers (``sleep`` and ``signal`` kinds)
        ignore queues and tags."""

    async def create_step(
        self, parent_id: str, parent_fence: int, new: NewTask, now: datetime,
        lease: Lease | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Insert a child task at its step key (parent, attempt, seq) unless one is there.

        Fenced on the parent: raises ``LeaseLostError`` if ``parent_fence`` is stale. With
        ``lease`` the new task is born claimed by that worker (fence 1) so that it can run
        locally without a poll. Returns ``(task, created)``; ``task`` is the existing row when
        the key was taken."""

    async def create_steps(
        self, parent_id: str, parent_fence: int, news: Sequence[NewTask], now: datetime
    ) -> list[tuple[TaskRecord, bool]]:
        """``create_step`` for many children of one parent in one transaction (fan-out):
        fenced on the parent once; each key inserted unless taken. Results in input order."""

    async def create_signal_wait(
        self, parent_id: str, parent_fence: int, new: NewTask, signal_name: str, now: datetime
    ) -> tuple[TaskRecord, bool]:
        """Insert a ``signal`` step at its step key unless one is there (fenced on the parent
        like ``create_step``). When it is created and a signal ``signal_name`` sent to the
        execution is still unconsumed, the oldest one is consumed by it: the task is born
        ``completed`` with that payload as its result. Otherwise it is born as ``new`` says
        (``waiting``: no timeout; ``pending`` due at ``new.due_at``: its timeout) and joins
        the execution's waiters of ``signal_name``, which ``send_signal`` serves in the order
        they were created. The check and the insert are serialised per execution with
        ``send_signal``, so a signal is never lost between them."""

    async def send_signal(
        self, execution_id: str, name: str, payload: bytes, now: datetime
    ) -> str | None:
        """Append a signal to the execution's queue of ``name``. If a waiter of that name is
        still ``pending`` or ``waiting`` and its parent is unfinished and still at the attempt
        that made the wait (a retried parent's old waits are orphans, never served), the
        oldest such waiter consumes it at once: completed with
        ``payload`` as its result, waking its parent as ``complete_task`` does; returns that
        task's id. Else the signal is kept for the next wait; returns ``""``. None (and
        nothing written) when there is no such execution."""

    async def record_effect(
        self, parent_id: str, parent_fence: int, new: NewTask, effect: ExecutionEffect,
        now: datetime,
    ) -> tuple[TaskRecord, bool]:
        """Insert a born-completed step (like ``create_step``) and, only if it was created,
        apply ``effect`` to its execution's counters or custom state in the same
        transaction: replaying the step applies nothing."""

    async def cache_claim(
        self, key: str, task_id: str, arg_digest: str, ttl_s: float | None, now: datetime
    ) -> CacheClaim:
        """Look up or take the idempotency/cache key ``key`` for ``task_id`` (one
        transaction). A stored result (``expires_at`` unset or after ``now``) is a ``hit``, or
        a ``conflict`` if stored for another ``arg_digest``; a hit appends ``cache_hit`` to
        the execution's progress. A key owned by another task that is not finished is
        ``busy``. Otherwise (no row, an expired result, an owner that failed, was cancelled
        or is gone, or ``task_id`` already the owner) ``task_id`` becomes the owner with no
        result: ``owner``. ``complete_task`` of the owner stores its result in the entry in
        the same transaction, with ``expires_at = now + ttl_s`` (None: never)."""

    async def cleanup_cache(self, now: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` cache entries whose result expired before ``now``."""

    async def acquire_maintenance(
        self, name: str, holder: str, until: datetime, now: datetime
    ) -> bool:
        """Take or renew the maintenance lease ``name`` for ``holder`` until ``until``: True
        if it was free, expired (before ``now``) or already held by ``holder``."""

    async def load_steps(self, parent_id: str, attempt: int) -> list[StepRecord]:
        """Every recorded child of ``parent_id`` at ``attempt`` (one query: replay prefetch)."""

    async def complete_task(
        self, task_id: str, fence: int, result: bytes, now: datetime
    ) -> bool:
        """Record a result. False (and no change) if the fence is stale or the task is not
        running. Wakes a suspended parent; completes the execution for a root task; stores
        the result in the cache entry this task owns, if any (see ``cache_claim``).

        A finished execution leaves no task unfinished: when a root task completes or fails
        its live execution, every other pending, waiting or running task of the execution
        is ``cancelled`` in the same transaction (``finished_at`` = ``now``, lease dropped,
        ``max_concurrent`` slots given back), as ``expire_executions`` cancels them. A
        worker still running one is fenced out: its later writes change nothing (see
        ``cancel_execution`` for how each call treats a task of a finished execution). The
        state each was in is kept for ``replay_dead_letter``."""

    async def fail_task(
        self, task_id: str, fence: int, error: bytes, now: datetime,
        dead_letter_reason: str | None,
    ) -> bool:
        """Record a final failure, with a dead-letter entry when a reason is given. Fenced like
        ``complete_task``. Wakes a suspended parent; fails the execution for a root task,
        cancelling its other unfinished tasks as ``complete_task`` does."""

    async def retry_task(
        self, task_id: str, fence: int, error: bytes, due_at: datetime, now: datetime
    ) -> bool:
        """Schedule the next attempt: pending at ``due_at``, ``attempt`` and ``retries`` + 1."""

    async def release_task(self, task_id: str, fence: int, now: datetime) -> bool:
        """Give a running task back (pending, same attempt, lease dropped), e.g. on drain."""

    async def mark_alone(self, task_id: str, fence: int, alone: bool) -> bool:
        """Record whether the running task's current run (``fence``) is the only one on its
        worker: a crash recovery of a task with ``crash_count`` > 0 is charged to it only
        if its run was marked alone when its lease lapsed. False, changing nothing, if the
        fence is stale or the task is not running."""

    async def suspend_task(
        self, task_id: str, fence: int, awaited: Sequence[str], now: datetime
    ) -> bool:
        """Drop the lease of a task that waits on ``awaited`` children: ``waiting``, or straight
        back to ``pending`` if one of them has already finished (no lost wake-up)."""

    async def renew_leases(
        self, worker_id: str, held: Sequence[tuple[str, int]], lease_until: datetime
    ) -> set[str]:
        """Extend the leases of ``(task_id, fence)`` pairs; return the ids no longer held
        (tasks of stopping executions are cancelled here and reported lost)."""

    async def cancel_execution(self, execution_id: str, error: bytes, now: datetime) -> str | None:
        """Cancel an execution: a pending or running one becomes ``cancelling`` (storing
        ``error``) and its pending and waiting tasks ``cancelled``; once none of its tasks
        runs it is ``cancelled``. A finished one is left alone. Returns its state afterwards,
        or None if there is no such execution.

        From then on, for a task of an execution that is not live (cancelling, cancelled,
        timed out, or completed or failed): no claim takes it, ``create_step`` under it raises ``LeaseLostError``, ``renew_leases`` cancels
        it and reports it lost, ``retry_task``/``release_task``/``suspend_task`` cancel it,
        and ``complete_task``/``fail_task`` record it without completing or failing the
        execution."""

    async def cancel_task(self, task_id: str, fence: int, now: datetime) -> bool:
        """Record that a running task stopped because its execution is being cancelled
        (fenced); the execution becomes ``cancelled`` once none of its tasks runs."""

    async def expire_executions(self, error: bytes, now: datetime, limit: int = 100) -> list[str]:
        """Time out live executions whose deadline passed before ``now``: ``timed_out`` with
        ``error``, every unfinished task cancelled. Also cancel running tasks of cancelling or
        finished executions whose lease expired (their workers died). Returns the ids of the
        executions it timed out."""

    async def get_outcomes(self, task_ids: Sequence[str]) -> list[TaskOutcome]:
        """Outcomes of those of ``task_ids`` that are finished."""

    # -- inspection -------------------------------------------------------------------------
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """One execution, or None."""

    async def list_executions(
        self, limit: int = 10, offset: int = 0, state: str | None = None
    ) -> list[ExecutionRecord]:
        """Executions, newest first."""

    async def get_task(self, task_id: str) -> TaskRecord | None:
        """One task, or None."""

    async def update_task(self, task: TaskRecord) -> None:
        """Operator override: write the task's state, worker, lease, due time, routing and
        retry counters, bumping its fence so that any worker holding it is fenced out."""

    async def list_tasks_for_execution(self, execution_id: str) -> list[TaskRecord]:
        """Every task of an execution, oldest first."""

    async def count_tasks(self, queue: str | None = None, state: str | None = None) -> int:
        """Count tasks, optionally by queue and state."""

    async def count_executions(self, state: str | None = None) -> int:
        """Count executions, optionally by state."""

    async def queue_depth(self, queue: str | None = None) -> int:
        """Pending tasks in ``queue`` (None: the default queue)."""

    # -- maintenance and dead letters --------------------------------------------------------
    async def cleanup_executions(self, older_than: datetime, limit: int | None = None) -> int:
        """Delete terminal executions finished before ``older_than`` with all their rows
        (tasks, signals, signal waiters); at most ``limit`` executions when given. Cache
        entries holding a result outlive their execution (until they expire)."""

    async def cleanup_dead_letters(self, older_than: datetime, limit: int | None = None) -> int:
        """Delete dead letters written before ``older_than`` (at most ``limit`` when given)."""

    async def list_dead_letters(self, limit: int = 50) -> list[DeadLetterRecord]:
        """Dead letters, newest first."""

    async def get_dead_letter(self, task_id: str) -> DeadLetterRecord | None:
        """One dead letter, or None."""

    async def replay_dead_letter(
        self, task_id: str, *, queue: str | None, reset_retries: bool, now: datetime,
        set_queue: bool = False,
    ) -> bool:
        """Run a dead-lettered task again with a fresh attempt, and resume the failed tasks
        above it by replay (their execution goes back to running). When the execution is
        revived, the tasks its failure cancelled (see ``complete_task``) are put back as they
        were: ``waiting`` if they were waiting, else ``pending`` (a running one's worker was
        fenced out), fence bumped; signal waits among them are served again by
        ``send_signal``. False if no such entry."""

    async def discard_dead_letter(self, task_id: str) -> bool:
        """Delete a dead letter; False if there was none."""


NotificationHandler = Callable[[str, Sequence[str]], Awaitable[None] | None]


@runtime_checkable
class NotificationBackend(Protocol):
    """Cross-process wake-ups. Messages carry ids only; losing one costs latency, not
    correctness, because a database poll is always the safety net."""

    async def start(self, handler: NotificationHandler) -> None:
        """Begin delivering ``(channel, ids)`` messages to ``handler``."""

    async def publish(self, channel: str, ids: Sequence[str]) -> None:
        """Announce ids on a channel (``work`` for new work, ``done`` for finished tasks)."""

    async def close(self) -> None:
        """Stop delivering and release connections."""

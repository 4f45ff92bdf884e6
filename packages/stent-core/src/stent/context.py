"""The task context: which task is running in this coroutine, and its step bookkeeping.

It lives in a ``ContextVar`` so that durable calls made by a task's body (and by the
coroutines ``asyncio.gather`` wraps them in, which copy the context) find their caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import LeaseLostError, NonDeterminismError, NotInExecutionContext
from .records import StepRecord, TaskRecord

if TYPE_CHECKING:
    from .app import Stent
    from .worker import Worker


@dataclass(eq=False)
class TaskContext:
    """Engine-side state of one running task attempt."""

    executor: Stent
    worker: Worker
    task: TaskRecord
    history: dict[int, StepRecord]
    next_seq: int = 0
    #: children this task is awaiting right now (for suspension and its lost-wake-up check)
    awaiting: dict[str, int] = field(default_factory=dict)
    nondeterminism: NonDeterminismError | None = None
    #: children whose wait was cut short (cancellation): still awaited as far as storage
    #: knows, so a suspension must check them too
    interrupted: set[str] = field(default_factory=set)
    #: step inserts still in flight (shielded from cancellation: they may yet commit)
    inflight: set[asyncio.Future[Any]] = field(default_factory=set)
    #: whether the loaded history holds a step not finished yet (computed once, on demand)
    history_unfinished: bool | None = None

    async def ensure_written(self) -> None:
        """Write this task's row first if it is an inline step not yet written: its own
        durable calls are fenced on it."""
        rt = self.worker.running.get(self.task.id)
        if rt is not None and not rt.materialized and rt.ctx is self:
            try:
                await self.worker.runner.materialize(rt)
            except LeaseLostError:
                # its caller lost its lease (or its execution is stopping): this run is over,
                # and user code sees a cancellation, never Stent's internal error
                if rt.stop_reason is None:
                    rt.stop_reason = "lease_lost"
                raise asyncio.CancelledError() from None

    def take_seq(self) -> int:
        """The next step sequence number, in program order."""
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def begin_wait(self, child_id: str) -> None:
        """This task starts awaiting ``child_id``; on its first outstanding wait it gives its
        worker slot back."""
        first = not self.awaiting
        self.awaiting[child_id] = self.awaiting.get(child_id, 0) + 1
        if first:
            self.worker.task_started_waiting(self)

    @contextlib.contextmanager
    def waiting_on(self, child_id: str) -> Iterator[None]:
        """Wait on ``child_id`` for the duration of the block; a wait ended by an exception
        (cancellation for a suspension) is remembered in :attr:`interrupted`."""
        self.begin_wait(child_id)
        try:
            yield
        except BaseException:
            self.interrupted.add(child_id)
            raise
        finally:
            self.end_wait(child_id)

    def end_wait(self, child_id: str) -> None:
        """The wait on ``child_id`` is over; with none left the task takes a slot again."""
        n = self.awaiting.get(child_id, 0) - 1
        if n <= 0:
            self.awaiting.pop(child_id, None)
        else:
            self.awaiting[child_id] = n
        if not self.awaiting and not self.worker.task_stopped_waiting(self):
            # a suspect runs alone on this worker right now: this task may not resume here;
            # its run stops before any more of its code runs and it is given back (it
            # resumes by replay)
            raise asyncio.CancelledError()


_current: ContextVar[TaskContext | None] = ContextVar("stent_task_context", default=None)


def current_task_context() -> TaskContext | None:
    """The running task's context, or None outside a task."""
    return _current.get()


def require_task_context(what: str) -> TaskContext:
    """The running task's context, or ``NotInExecutionContext`` naming ``what``."""
    ctx = _current.get()
    if ctx is None:
        raise NotInExecutionContext(f"{what} can only be called inside a running durable task")
    return ctx


@dataclass(frozen=True)
class ExecutionContext:
    """What a running task may know about itself (``Stent.context()``), and its execution's
    counters and custom state.

    Attributes:
        execution_id: the execution this task belongs to.
        task_id: this task.
        attempt: this attempt's number (1 for the first).
        idempotency_key: stable across re-runs and retries of this task: use it to make
            external side effects idempotent.
        step_name: the registered name of the running function.
        fence: this run's fence token (bumped by every claim): a write by an older run of
            this task is refused. 0 for a step running before its row is written (its
            caller's lease covers it then).
    """

    execution_id: str
    task_id: str
    attempt: int
    idempotency_key: str
    step_name: str
    extra: dict[str, Any] = field(default_factory=dict)
    fence: int = 0
    _task: TaskContext | None = field(default=None, repr=False, compare=False)

    async def increment(self, counter: str, by: int = 1) -> None:
        """Add ``by`` to the execution's counter ``counter`` (starting at 0), exactly once:
        the change is recorded as a step with it, so a replay or re-run of this task does
        not apply it again. ``state_of(...).counters`` shows the totals.

        Raises:
            ValueError: a counter name outside ``[A-Za-z0-9_.:-]{1,200}`` or a non-int ``by``.
        """
        from .names import check_name
        from .records import ExecutionEffect
        from .steps import record_effect

        counter = check_name("counter", counter)
        if isinstance(by, bool) or not isinstance(by, int) or abs(by) > 2**53:
            raise ValueError(f"invalid increment {by!r} for counter {counter!r}: expected an int")
        await record_effect(self._require(), ExecutionEffect("increment", counter, delta=by))

    async def set_state(self, key: str, value: Any) -> None:
        """Set the execution's custom state ``key`` to ``value`` (JSON: None, bool, int,
        float, str, lists and dicts of them), exactly once like :meth:`increment`.
        ``state_of(...).custom_state`` shows it.

        Raises:
            ValueError: a key outside ``[A-Za-z0-9_.:-]{1,200}``.
            SerializationError: a value that is not plain JSON (naming where).
        """
        import json

        from .errors import SerializationError
        from .names import check_name
        from .records import ExecutionEffect
        from .steps import record_effect

        key = check_name("custom state key", key)
        try:
            text = json.dumps(value, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(
                f"custom state {key!r} must be plain JSON (None, bool, int, float, str, "
                f"list, dict with str keys): {exc}"
            ) from None
        ctx = self._require()
        from .serialization import check_payload_size

        check_payload_size(text.encode(), ctx.executor.max_payload_bytes,
                           f"custom state {key!r}")
        await record_effect(ctx, ExecutionEffect("set_state", key, value_json=text))

    def _require(self) -> TaskContext:
        if self._task is None or _current.get() is not self._task:
            raise NotInExecutionContext(
                "counters and custom state can only be changed by the task whose "
                "Stent.context() this is, while it runs"
            )
        return self._task

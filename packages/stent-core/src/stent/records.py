"""Stored records: executions, tasks, dead letters, and their states.

Times are aware UTC ``datetime`` objects in the engine; backends may store them as they like
(the SQL backends keep UTC epoch seconds) but must hand back aware UTC datetimes.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class ExecutionStatus(StrEnum):
    """States of an execution."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL_EXECUTION_STATES = frozenset({"completed", "failed", "timed_out", "cancelled"})
#: states in which an execution's tasks may run, start steps, complete or fail it
LIVE_EXECUTION_STATES = frozenset({"pending", "running"})


class TaskStatus(StrEnum):
    """States of a task."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_TASK_STATES = frozenset({"completed", "failed", "cancelled"})


class TaskKind(StrEnum):
    """What a task is: a user function or a built-in step."""

    FUNCTION = "function"
    SLEEP = "sleep"
    #: a wait for a signal: born ``waiting`` (no timeout) or ``pending`` due at its timeout;
    #: completed by ``send_signal`` with the payload, or failed with ``SignalTimeoutError``
    #: by the worker that claims it when its timeout is due
    SIGNAL = "signal"
    #: a value recorded once and replayed (``Stent.now()``, ``Stent.uuid4()``); born completed
    VALUE = "value"


@dataclass(slots=True)
class TaskRecord:
    """One durable call. Mutable so that operators can edit it and ``update_task`` it.

    Attributes:
        id: task id.
        execution_id: the execution this task belongs to.
        parent_id: the calling task, None for an execution's root task.
        parent_attempt: the caller's attempt when it made this call (part of the step key).
        seq: sequence number of this call within the caller's attempt (part of the step key).
        step_name: registered name of the function (or ``stent.sleep`` etc. for built-ins).
        kind: ``function``, ``sleep``, ``signal`` or ``value``.
        state: one of :class:`TaskStatus`.
        args: encoded arguments.
        arg_digest: digest of name and encoded arguments, compared on replay.
        result: encoded result once completed.
        error: encoded error once failed (or the last error while retrying).
        queue, tags, priority: routing.
        due_at: not claimable before this time.
        worker_id, lease_expires_at: the current lease, if any.
        fence: incremented on every claim and operator update; fences all worker writes.
        attempt: attempt number, starting at 1; part of the step keys of this task's children.
        retries: failed attempts counted against the retry policy.
        crash_count: claims of this task after a lease expired (worker death).
        retry_policy: the retry policy as stored (a JSON-able dict).
        timeout_s: per-attempt time limit in seconds, if any.
        max_concurrent: cluster-wide cap on running instances of this function, if any.
        idempotency_key: stable across re-runs, for external side effects.
    """

    id: str
    execution_id: str
    parent_id: str | None
    parent_attempt: int
    seq: int
    step_name: str
    kind: str
    state: str
    args: bytes
    arg_digest: str
    created_at: datetime
    due_at: datetime
    result: bytes | None = None
    error: bytes | None = None
    queue: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    fence: int = 0
    attempt: int = 1
    retries: int = 0
    crash_count: int = 0
    retry_policy: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    max_concurrent: int | None = None
    idempotency_key: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: W3C ``traceparent`` of the span that created this task (None without tracing)
    trace_context: str | None = None

    def copy(self) -> TaskRecord:
        """A detached copy (backends never hand out their own objects)."""
        return dataclasses.replace(self, retry_policy=copy.deepcopy(self.retry_policy))


@dataclass(slots=True)
class ExecutionRecord:
    """One run of a dispatched function."""

    id: str
    function: str
    state: str
    root_task_id: str
    created_at: datetime
    args: bytes = b""
    result: bytes | None = None
    error: bytes | None = None
    queue: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    idempotency_key: str | None = None
    deadline: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    custom_state: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> ExecutionRecord:
        """A detached copy."""
        return dataclasses.replace(
            self,
            progress=copy.deepcopy(self.progress),
            counters=dict(self.counters),
            custom_state=copy.deepcopy(self.custom_state),
        )


@dataclass(slots=True)
class DeadLetterRecord:
    """A task that failed for good (attempts exhausted, poison, or undecodable)."""

    task_id: str
    execution_id: str
    step_name: str
    queue: str | None
    reason: str
    error: bytes | None
    created_at: datetime
    retries: int

    def copy(self) -> DeadLetterRecord:
        """A detached copy."""
        return dataclasses.replace(self)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What replay needs to know about one recorded child call."""

    task_id: str
    seq: int
    step_name: str
    kind: str
    arg_digest: str
    state: str
    result: bytes | None
    error: bytes | None
    #: when it is (or was) due: a replayed timer needs it to wake on time
    due_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """A finished task's outcome, as handed to waiters."""

    task_id: str
    state: str
    result: bytes | None
    error: bytes | None


@dataclass(frozen=True, slots=True)
class ClaimFilter:
    """What a worker may claim.

    Attributes:
        names: registered function names; built-in kinds are always eligible.
        queues: None for every queue, else the queues to take (None in the list = default).
        tags: None or empty for a worker without tags (claims everything); else untagged
            tasks and tasks sharing one of these tags.
    """

    names: frozenset[str]
    queues: tuple[str | None, ...] | None = None
    tags: tuple[str, ...] | None = None

    def matches(self, task: TaskRecord) -> bool:
        """Whether ``task`` is eligible for a worker with this filter."""
        if task.kind == TaskKind.FUNCTION and task.step_name not in self.names:
            return False
        if task.kind in (TaskKind.SLEEP, TaskKind.SIGNAL):
            # timers ignore queues and tags: any worker fires them
            return True
        if self.queues is not None and task.queue not in self.queues:
            return False
        if self.tags and task.tags and not set(task.tags) & set(self.tags):
            return False
        return True


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to insert (root task at dispatch, or a child step)."""

    id: str
    parent_id: str | None
    parent_attempt: int
    seq: int
    step_name: str
    kind: str
    args: bytes
    arg_digest: str
    due_at: datetime
    queue: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    retry_policy: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    max_concurrent: int | None = None
    idempotency_key: str = ""
    #: a task born finished (recorded values, steps run before they were written): its state
    #: and outcome. A step born ``pending`` with ``retries > 0`` is a retry waiting for
    #: ``due_at``; one born ``failed`` with a ``dead_letter_reason`` also gets a dead letter.
    state: str = "pending"
    result: bytes | None = None
    error: bytes | None = None
    attempt: int = 1
    retries: int = 0
    dead_letter_reason: str | None = None
    #: W3C ``traceparent`` of the span that created this task (None without tracing)
    trace_context: str | None = None


@dataclass(frozen=True, slots=True)
class NewExecution:
    """An execution to insert with its root task."""

    id: str
    function: str
    args: bytes
    root: NewTask
    queue: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    idempotency_key: str | None = None
    deadline: datetime | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A claim's lease: who holds it and until when."""

    worker_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class CacheClaim:
    """What ``Backend.cache_claim`` found under an idempotency/cache key.

    Attributes:
        status: ``owner`` (the caller now owns the key and runs the body), ``hit`` (a live
            result is stored: ``result``), ``busy`` (another unfinished task owns the key:
            ``owner_task_id``; wait for it and ask again) or ``conflict`` (a live result is
            stored for other arguments: ``arg_digest`` is theirs).
    """

    status: str
    result: bytes | None = None
    owner_task_id: str | None = None
    arg_digest: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionEffect:
    """A change to an execution's counters or custom state, applied exactly once together
    with the step that records it (``Backend.record_effect``).

    Attributes:
        kind: ``increment`` (counter ``name`` += ``delta``) or ``set_state`` (custom state
            ``name`` = the JSON value ``value_json``).
        name: counter or state key (validated by the engine against the name pattern).
        delta: the increment.
        value_json: the new state value, as JSON text.
    """

    kind: str
    name: str
    delta: int = 0
    value_json: str = "null"

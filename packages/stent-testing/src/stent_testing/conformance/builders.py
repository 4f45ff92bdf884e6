"""Small builders for the records the conformance suite feeds to a backend.

Engine times are always passed in explicitly, so the suite never sleeps: a test's "now" is
whatever datetime it hands to the backend. Times are built from :data:`T0`, a fixed aware UTC
instant with a non-zero microsecond part (so that a backend which drops sub-second precision
shows it), with :func:`at`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from stent.records import ClaimFilter, NewExecution, NewTask

#: The suite's epoch: every time a test passes to a backend is ``T0`` plus some seconds.
T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

#: The function name of tasks built without an explicit ``name``.
WORK = "app:work"
#: A second registered function name.
OTHER = "app:other"
#: A name no worker in the suite registers.
UNREGISTERED = "app:unregistered"
#: Names registered by the suite's default worker.
REGISTERED = frozenset({WORK, OTHER})


def at(seconds: float) -> datetime:
    """The instant ``seconds`` after :data:`T0`.

    Args:
        seconds: offset from ``T0``; may be negative or fractional.

    Returns:
        An aware UTC datetime.
    """
    return T0 + timedelta(seconds=seconds)


def new_id() -> str:
    """A fresh id for an execution or a task (a UUID string, which every backend accepts)."""
    return str(uuid.uuid4())


def digest_of(name: str, args: bytes) -> str:
    """A stand-in for the engine's argument digest: any stable string will do for a backend."""
    return f"{name}:{args.hex()}"


def new_task(
    *,
    id: str | None = None,
    name: str = WORK,
    kind: str = "function",
    parent_id: str | None = None,
    parent_attempt: int = 1,
    seq: int = 0,
    args: bytes = b"[]",
    arg_digest: str | None = None,
    due_at: datetime = T0,
    queue: str | None = None,
    tags: Iterable[str] = (),
    priority: int = 0,
    retry_policy: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
    max_concurrent: int | None = None,
    idempotency_key: str = "",
    state: str = "pending",
    result: bytes | None = None,
    trace_context: str | None = None,
) -> NewTask:
    """A :class:`~stent.records.NewTask` with sensible defaults.

    Args:
        id: task id; a fresh UUID when omitted.
        name: the step (function) name.
        kind: ``function``, ``sleep``, ``signal`` or ``value``.
        parent_id: the calling task for a step; None for a root task.
        parent_attempt: the caller's attempt (part of the step key).
        seq: the call's sequence number within the caller's attempt (part of the step key).
        args: encoded arguments.
        arg_digest: defaults to :func:`digest_of` ``(name, args)``.
        due_at: not claimable before this time.
        queue: routing queue; None is the default queue.
        tags: routing tags.
        priority: higher is claimed first.
        retry_policy: the stored retry policy dict.
        timeout_s: per-attempt time limit.
        max_concurrent: cluster-wide cap for the function.
        idempotency_key: stable key for external side effects.
        state: ``pending``, ``waiting`` (a signal wait without timeout), or a terminal state
            for a task born finished.
        result: the result of a task born completed.
        trace_context: the W3C ``traceparent`` of the creating span, if any.

    Returns:
        The new task description.
    """
    return NewTask(
        id=id or new_id(),
        parent_id=parent_id,
        parent_attempt=parent_attempt,
        seq=seq,
        step_name=name,
        kind=kind,
        args=args,
        arg_digest=arg_digest if arg_digest is not None else digest_of(name, args),
        due_at=due_at,
        queue=queue,
        tags=tuple(tags),
        priority=priority,
        retry_policy=dict(retry_policy or {}),
        timeout_s=timeout_s,
        max_concurrent=max_concurrent,
        idempotency_key=idempotency_key,
        state=state,
        result=result,
        trace_context=trace_context,
    )


def new_execution(
    *,
    id: str | None = None,
    name: str = WORK,
    args: bytes = b"[]",
    due_at: datetime = T0,
    queue: str | None = None,
    tags: Iterable[str] = (),
    priority: int = 0,
    idempotency_key: str | None = None,
    deadline: datetime | None = None,
    root_id: str | None = None,
    retry_policy: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
    max_concurrent: int | None = None,
    trace_context: str | None = None,
) -> NewExecution:
    """A :class:`~stent.records.NewExecution` whose root task carries the same routing.

    Args:
        id: execution id; a fresh UUID when omitted.
        name: the dispatched function's name.
        args: encoded arguments (of the execution and its root task).
        due_at: when the root task becomes claimable.
        queue: routing queue; None is the default queue.
        tags: routing tags.
        priority: higher is claimed first.
        idempotency_key: dispatch idempotency key, if any.
        deadline: the execution's ``max_duration`` deadline, if any.
        root_id: the root task's id; a fresh UUID when omitted.
        retry_policy: the root task's stored retry policy dict.
        timeout_s: the root task's per-attempt time limit.
        max_concurrent: the root function's cluster-wide cap on running instances.
        trace_context: the root task's W3C ``traceparent``, if any.

    Returns:
        The new execution description.
    """
    tags = tuple(tags)
    root = new_task(
        id=root_id, name=name, args=args, due_at=due_at, queue=queue, tags=tags,
        priority=priority, retry_policy=retry_policy, timeout_s=timeout_s,
        max_concurrent=max_concurrent, trace_context=trace_context,
    )
    return NewExecution(
        id=id or new_id(), function=name, args=args, root=root, queue=queue, tags=tags,
        priority=priority, idempotency_key=idempotency_key, deadline=deadline,
    )


def claim_filter(
    names: Iterable[str] = REGISTERED,
    *,
    queues: Iterable[str | None] | None = None,
    tags: Iterable[str] | None = None,
) -> ClaimFilter:
    """A worker's :class:`~stent.records.ClaimFilter`; by default it takes every queue and tag.

    Args:
        names: registered function names (default :data:`REGISTERED`).
        queues: None for every queue, else the queues to take (None in it = default queue).
        tags: the worker's tags; None or empty for a worker without tags.

    Returns:
        The filter.
    """
    return ClaimFilter(
        names=frozenset(names),
        queues=None if queues is None else tuple(queues),
        tags=None if tags is None else tuple(tags),
    )

"""Conversions between PostgreSQL rows and Stent records, and statement arguments.

Times are ``timestamptz``. Every datetime is made aware UTC here before it is sent
(``astimezone`` reads a naive one as local time, the spec's rule for operator input; asyncpg
would read it as UTC), and asyncpg hands ``timestamptz`` values back as aware UTC datetimes,
exact to the microsecond. ``jsonb`` travels as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from stent.records import (
    TERMINAL_TASK_STATES,
    DeadLetterRecord,
    ExecutionEffect,
    ExecutionRecord,
    Lease,
    NewExecution,
    NewTask,
    StepRecord,
    TaskRecord,
)

Row = Mapping[str, Any]


def utc(dt: datetime) -> datetime:
    """``dt`` as an aware UTC datetime (a naive ``dt`` is local time)."""
    return dt.astimezone(UTC)


def utc_or_none(dt: datetime | None) -> datetime | None:
    """Like :func:`utc`, passing None through."""
    return None if dt is None else dt.astimezone(UTC)


def iso(now: datetime) -> str:
    """The ``at`` of a progress entry: ISO 8601 in UTC, as the reference backend writes it."""
    return now.astimezone(UTC).isoformat()


def progress(event: str, now: datetime, **detail: object) -> str:
    """A one-entry JSON array ``[{"event", "at", **detail}]``, to append to a progress log."""
    entry: dict[str, object] = {"event": event, "at": iso(now)}
    entry.update(detail)
    return json.dumps([entry], separators=(",", ":"))


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def execution_args(new: NewExecution, now: datetime) -> tuple[Any, ...]:
    """Arguments of ``insert_execution`` ($1..$33; see queries/postgres.sql)."""
    root = new.root
    finished = utc(now) if root.state in TERMINAL_TASK_STATES else None
    return (
        new.id, new.function, new.args, new.queue, list(new.tags), new.priority,
        new.idempotency_key, utc_or_none(new.deadline), utc(now),
        progress("dispatched", now),
        root.id, root.parent_id, root.parent_attempt, root.seq, root.step_name, root.kind,
        root.state, root.args, root.arg_digest, root.result, root.queue, list(root.tags),
        root.priority, utc(root.due_at), json.dumps(root.retry_policy),
        _float_or_none(root.timeout_s), root.max_concurrent, root.idempotency_key, finished,
        root.error, root.attempt, root.retries, root.trace_context,
    )


def step_args(
    parent_id: str, parent_fence: int, new: NewTask, now: datetime, lease: Lease | None,
) -> tuple[Any, ...]:
    """Arguments of ``insert_step`` ($1..$32; see queries/postgres.sql)."""
    finished = utc(now) if new.state in TERMINAL_TASK_STATES else None
    state = new.state
    worker_id: str | None = None
    lease_until: datetime | None = None
    fence = 0
    # A step born finished ran before it was written: it started when it finished.
    started: datetime | None = finished
    if lease is not None and new.state == "pending":
        # Born claimed by the creating worker, so it can run locally without a poll.
        state, worker_id, lease_until = "running", lease.worker_id, utc(lease.expires_at)
        fence, started = 1, utc(now)
    slot = state == "running" and new.max_concurrent is not None
    return (
        parent_id, parent_fence, new.id, new.parent_attempt, new.seq, new.step_name,
        new.kind, state, new.args, new.arg_digest, new.result, new.queue, list(new.tags),
        new.priority, utc(new.due_at), json.dumps(new.retry_policy),
        _float_or_none(new.timeout_s), new.max_concurrent, new.idempotency_key, utc(now),
        finished, worker_id, lease_until, fence, started, slot, new.error, new.attempt,
        new.retries, new.dead_letter_reason, iso(now), new.trace_context,
    )


def steps_args(
    parent_id: str, parent_fence: int, news: Sequence[NewTask], now: datetime,
) -> tuple[Any, ...]:
    """Arguments of ``create_steps`` ($1..$26; see queries/postgres.sql): one array per
    field; tags and retry policies as JSON arrays (a text[] cannot be ragged)."""
    return (
        parent_id, parent_fence, utc(now), iso(now),
        [n.id for n in news], [n.parent_attempt for n in news], [n.seq for n in news],
        [n.step_name for n in news], [n.kind for n in news], [n.state for n in news],
        [n.args for n in news], [n.arg_digest for n in news], [n.result for n in news],
        [n.error for n in news], [n.queue for n in news],
        json.dumps([list(n.tags) for n in news]), [n.priority for n in news],
        [utc(n.due_at) for n in news], json.dumps([n.retry_policy for n in news]),
        [_float_or_none(n.timeout_s) for n in news], [n.max_concurrent for n in news],
        [n.idempotency_key for n in news], [n.attempt for n in news],
        [n.retries for n in news], [n.dead_letter_reason for n in news],
        [n.trace_context for n in news],
    )


def signal_wait_args(
    parent_id: str, parent_fence: int, new: NewTask, signal_name: str, now: datetime,
) -> tuple[Any, ...]:
    """Arguments of ``create_signal_wait`` ($1..$25; see queries/postgres.sql)."""
    return (
        parent_id, parent_fence, new.id, new.parent_attempt, new.seq, new.step_name,
        new.kind, new.state, new.args, new.arg_digest, new.result, new.error, new.queue,
        list(new.tags), new.priority, utc(new.due_at), json.dumps(new.retry_policy),
        _float_or_none(new.timeout_s), new.max_concurrent, new.idempotency_key, new.attempt,
        new.retries, new.trace_context, signal_name, utc(now),
    )


def effect_args(
    parent_id: str, parent_fence: int, new: NewTask, effect: ExecutionEffect, now: datetime,
) -> tuple[Any, ...]:
    """Arguments of ``record_effect`` ($1..$29; see queries/postgres.sql)."""
    finished = utc(now) if new.state in TERMINAL_TASK_STATES else None
    return (
        parent_id, parent_fence, new.id, new.parent_attempt, new.seq, new.step_name,
        new.kind, new.state, new.args, new.arg_digest, new.result, new.queue, list(new.tags),
        new.priority, utc(new.due_at), json.dumps(new.retry_policy),
        _float_or_none(new.timeout_s), new.max_concurrent, new.idempotency_key, utc(now),
        finished, new.error, new.attempt, new.retries, new.trace_context,
        effect.kind, effect.name, effect.delta, effect.value_json,
    )


def task_from_row(row: Row) -> TaskRecord:
    """A :class:`TaskRecord` from a full ``stent_tasks`` row."""
    return TaskRecord(
        id=row["id"],
        execution_id=row["execution_id"],
        parent_id=row["parent_id"],
        parent_attempt=row["parent_attempt"],
        seq=row["seq"],
        step_name=row["step_name"],
        kind=row["kind"],
        state=row["state"],
        args=row["args"],
        arg_digest=row["arg_digest"],
        created_at=row["created_at"],
        due_at=row["due_at"],
        result=row["result"],
        error=row["error"],
        queue=row["queue"],
        tags=tuple(row["tags"]),
        priority=row["priority"],
        worker_id=row["worker_id"],
        lease_expires_at=row["lease_expires_at"],
        fence=row["fence"],
        attempt=row["attempt"],
        retries=row["retries"],
        crash_count=row["crash_count"],
        retry_policy=json.loads(row["retry_policy"]),
        timeout_s=row["timeout_s"],
        max_concurrent=row["max_concurrent"],
        idempotency_key=row["idempotency_key"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        trace_context=row["trace_context"],
    )


def execution_from_row(row: Row) -> ExecutionRecord:
    """An :class:`ExecutionRecord` from a full ``stent_executions`` row."""
    return ExecutionRecord(
        id=row["id"],
        function=row["function"],
        state=row["state"],
        root_task_id=row["root_task_id"],
        created_at=row["created_at"],
        args=row["args"],
        result=row["result"],
        error=row["error"],
        queue=row["queue"],
        tags=tuple(row["tags"]),
        priority=row["priority"],
        idempotency_key=row["idempotency_key"],
        deadline=row["deadline"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress=json.loads(row["progress"]),
        counters=json.loads(row["counters"]),
        custom_state=json.loads(row["custom_state"]),
    )


def step_from_row(row: Row) -> StepRecord:
    """A :class:`StepRecord` from a ``load_steps`` row."""
    return StepRecord(
        task_id=row["id"],
        seq=row["seq"],
        step_name=row["step_name"],
        kind=row["kind"],
        arg_digest=row["arg_digest"],
        state=row["state"],
        result=row["result"],
        error=row["error"],
        due_at=utc(row["due_at"]),
    )


def dead_letter_from_row(row: Row) -> DeadLetterRecord:
    """A :class:`DeadLetterRecord` from a ``stent_dead_letters`` row."""
    return DeadLetterRecord(
        task_id=row["task_id"],
        execution_id=row["execution_id"],
        step_name=row["step_name"],
        queue=row["queue"],
        reason=row["reason"],
        error=row["error"],
        created_at=row["created_at"],
        retries=row["retries"],
    )

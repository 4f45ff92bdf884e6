"""Conversions between SQLite rows and Stent records.

Times are stored as UTC unix epoch seconds (REAL). ``datetime.timestamp()`` reads a naive
datetime as local time, which is exactly the rule the spec gives for naive cutoffs, and a
double keeps microseconds exactly for any date before 2106, so a time round-trips unchanged
and SQL comparisons order exactly as the datetimes do.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from stent.records import (
    DeadLetterRecord,
    ExecutionRecord,
    NewTask,
    StepRecord,
    TaskRecord,
)


def epoch(dt: datetime) -> float:
    """Unix epoch seconds of ``dt`` (a naive ``dt`` is local time)."""
    return dt.timestamp()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_us(dt: datetime) -> int:
    """Unix epoch microseconds of ``dt``, exactly (a naive ``dt`` is local time).

    ``epoch(dt) == epoch_us(dt) / 1e6`` (both are the correctly rounded quotient), so SQL
    can add a duration in whole microseconds and land on exactly the double that
    ``epoch(dt + duration)`` gives.
    """
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return (dt - _EPOCH) // _MICROSECOND


def epoch_or_none(dt: datetime | None) -> float | None:
    """Like :func:`epoch`, passing None through."""
    return None if dt is None else dt.timestamp()


def utc(seconds: float) -> datetime:
    """The aware UTC datetime of stored epoch seconds."""
    return datetime.fromtimestamp(seconds, UTC)


def utc_or_none(seconds: float | None) -> datetime | None:
    """Like :func:`utc`, passing None through."""
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def json_list(items: Sequence[Any]) -> str:
    """A JSON array (tags, id lists for ``json_each``)."""
    return json.dumps(list(items), separators=(",", ":"))


def progress_entry(event: str, now: datetime, **detail: object) -> str:
    """One progress-log entry as JSON: ``{"event", "at", **detail}``."""
    entry: dict[str, object] = {"event": event, "at": now.astimezone(UTC).isoformat()}
    entry.update(detail)
    return json.dumps(entry, separators=(",", ":"))


def task_params(new: NewTask, now: datetime) -> dict[str, Any]:
    """Bind parameters shared by the root-task and step inserts."""
    finished = new.state in ("completed", "failed", "cancelled")
    return {
        "id": new.id,
        "parent_id": new.parent_id,
        "parent_attempt": new.parent_attempt,
        "seq": new.seq,
        "step_name": new.step_name,
        "kind": new.kind,
        "state": new.state,
        "args": new.args,
        "arg_digest": new.arg_digest,
        "result": new.result,
        "queue": new.queue,
        "tags": json_list(new.tags),
        "priority": new.priority,
        "due_at": epoch(new.due_at),
        "retry_policy": json.dumps(new.retry_policy),
        "timeout_s": new.timeout_s,
        "max_concurrent": new.max_concurrent,
        "idempotency_key": new.idempotency_key,
        "now": epoch(now),
        "finished_at": epoch(now) if finished else None,
        "error": new.error,
        "attempt": new.attempt,
        "retries": new.retries,
        "trace_context": new.trace_context,
    }


def task_from_row(row: sqlite3.Row) -> TaskRecord:
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
        created_at=utc(row["created_at"]),
        due_at=utc(row["due_at"]),
        result=row["result"],
        error=row["error"],
        queue=row["queue"],
        tags=_stored_tags(row["tags"]),
        priority=row["priority"],
        worker_id=row["worker_id"],
        lease_expires_at=utc_or_none(row["lease_expires_at"]),
        fence=row["fence"],
        attempt=row["attempt"],
        retries=row["retries"],
        crash_count=row["crash_count"],
        retry_policy=_stored_policy(row["retry_policy"]),
        timeout_s=row["timeout_s"],
        max_concurrent=row["max_concurrent"],
        idempotency_key=row["idempotency_key"],
        started_at=utc_or_none(row["started_at"]),
        finished_at=utc_or_none(row["finished_at"]),
        trace_context=row["trace_context"],
    )


def execution_from_row(row: sqlite3.Row) -> ExecutionRecord:
    """An :class:`ExecutionRecord` from a full ``stent_executions`` row."""
    return ExecutionRecord(
        id=row["id"],
        function=row["function"],
        state=row["state"],
        root_task_id=row["root_task_id"],
        created_at=utc(row["created_at"]),
        args=row["args"],
        result=row["result"],
        error=row["error"],
        queue=row["queue"],
        tags=tuple(json.loads(row["tags"])),
        priority=row["priority"],
        idempotency_key=row["idempotency_key"],
        deadline=utc_or_none(row["deadline"]),
        started_at=utc_or_none(row["started_at"]),
        finished_at=utc_or_none(row["finished_at"]),
        progress=json.loads(row["progress"]),
        counters=json.loads(row["counters"]),
        custom_state=json.loads(row["custom_state"]),
    )


def step_from_row(row: sqlite3.Row) -> StepRecord:
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


def dead_letter_from_row(row: sqlite3.Row) -> DeadLetterRecord:
    """A :class:`DeadLetterRecord` from a ``stent_dead_letters`` row."""
    return DeadLetterRecord(
        task_id=row["task_id"],
        execution_id=row["execution_id"],
        step_name=row["step_name"],
        queue=row["queue"],
        reason=row["reason"],
        error=row["error"],
        created_at=utc(row["created_at"]),
        retries=row["retries"],
    )


def _stored_tags(text: str) -> tuple[str, ...]:
    """A task's tags; a corrupted value (written around Stent) reads as no tags rather than
    failing the claim that read it, which would stop every worker at that row."""
    try:
        tags = json.loads(text)
    except (TypeError, ValueError):
        return ()
    return tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else ()


def _stored_policy(text: str) -> dict[str, Any]:
    """A task's retry policy; a corrupted value reads as a policy the engine refuses (the
    task is then dead-lettered as "unreadable retry policy") instead of failing the claim."""
    try:
        policy = json.loads(text)
    except (TypeError, ValueError):
        return {"unreadable": str(text)[:200]}
    return policy if isinstance(policy, dict) else {"unreadable": str(text)[:200]}

"""What users see of stored executions: ``ExecutionState`` and the exported history."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .records import ExecutionRecord, TaskRecord
from .serialization import decode_error

if TYPE_CHECKING:
    from .app import Stent

HISTORY_FORMAT = "stent.history/1"


@dataclass(frozen=True)
class ExecutionState:
    """A snapshot of one execution.

    Attributes:
        id: execution id.
        function: registered name of the dispatched function.
        state: ``pending``, ``running``, ``completed``, ``failed``, ``timed_out``,
            ``cancelling`` or ``cancelled``.
        result: the decoded return value once completed (None before).
        error: the decoded exception once failed (None otherwise).
        created_at, started_at, finished_at: timestamps (aware UTC).
        retries: retries taken by the execution's root task.
        progress: the bounded progress log (oldest first).
        tags, priority, queue: routing.
        counters, custom_state: the execution context's stored state.
    """

    id: str
    function: str
    state: str
    result: Any = None
    error: BaseException | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    retries: int = 0
    progress: list[dict[str, Any]] = field(default_factory=list)
    tags: tuple[str, ...] = ()
    priority: int = 0
    queue: str | None = None
    counters: dict[str, int] = field(default_factory=dict)
    custom_state: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether the execution reached a terminal state."""
        return self.state in ("completed", "failed", "timed_out", "cancelled")


def execution_state(executor: Stent, ex: ExecutionRecord, root: TaskRecord | None) -> ExecutionState:
    """Build the public snapshot of ``ex``."""
    result: Any = None
    if ex.result is not None:
        try:
            result = executor.serializer.loads(ex.result)
        except Exception as exc:  # show what we can; the stored bytes are untouched
            result = f"<undecodable result: {exc}>"
    error = decode_error(ex.error) if ex.error is not None else None
    return ExecutionState(
        id=ex.id, function=ex.function, state=ex.state, result=result, error=error,
        created_at=ex.created_at, started_at=ex.started_at, finished_at=ex.finished_at,
        retries=root.retries if root is not None else 0, progress=list(ex.progress),
        tags=tuple(ex.tags), priority=ex.priority, queue=ex.queue, counters=dict(ex.counters),
        custom_state=dict(ex.custom_state),
    )


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def export_history(ex: ExecutionRecord, tasks: list[TaskRecord]) -> dict[str, Any]:
    """The recorded step history of an execution as a JSON-able dict.

    Payloads are base64 of the stored bytes, so a history replays exactly with the serializer
    that wrote it.
    """
    return {
        "format": HISTORY_FORMAT,
        "execution_id": ex.id,
        "function": ex.function,
        "state": ex.state,
        "args": _b64(ex.args),
        "result": _b64(ex.result),
        "error": _b64(ex.error),
        "tasks": [
            {
                "id": t.id, "parent_id": t.parent_id, "parent_attempt": t.parent_attempt,
                "seq": t.seq, "step_name": t.step_name, "kind": t.kind, "state": t.state,
                "attempt": t.attempt, "retries": t.retries, "arg_digest": t.arg_digest,
                "args": _b64(t.args), "result": _b64(t.result), "error": _b64(t.error),
                "created_at": _iso(t.created_at), "finished_at": _iso(t.finished_at),
            }
            for t in tasks
        ],
    }

"""The replay checker: run workflow code against a recorded history, without running a step.

A history is what ``Stent.history(execution_id)`` (or ``stent history export ID``) gives. Replay
sets up a task context like a worker's, with the engine's own step machinery, but whose storage
is the history: every durable call, sleep, ``Stent.now()`` and ``Stent.uuid4()`` the code makes
is matched against the step recorded at its key and answered with the recorded outcome. The
first call that does not match raises :class:`HistoryDivergence` (a ``NonDeterminismError``)
naming the step and showing the recorded call beside the one the code makes now. This is what
a worker resuming an old execution with new code would run into, found in CI instead.

Typical use, with golden histories checked into the test tree::

    def test_order_workflow_still_replays() -> None:
        replay(load_history("tests/golden/order.json"), place_order)
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from stent.clock import SystemClock
from stent.context import TaskContext, _current
from stent.durable import DurableFunction, default_registry
from stent.errors import NonDeterminismError
from stent.inspection import HISTORY_FORMAT
from stent.records import TERMINAL_TASK_STATES, NewTask, TaskKind, TaskRecord
from stent.registry import FunctionRegistry
from stent.serialization import Serializer, decode_error, resolve_serializer
from stent.steps import decode_call
from stent.tracing import Tracing

if TYPE_CHECKING:
    from stent import Stent
    from stent.worker import Worker

__all__ = [
    "HistoryDivergence",
    "ReplayResult",
    "load_history",
    "replay",
    "replay_async",
]

_LONGEST_VALUE = 200
"""Characters of one argument shown in a divergence message."""


class HistoryDivergence(NonDeterminismError):
    """The code made a durable call that differs from the one recorded at its step key.

    Attributes:
        seq: the step's sequence number within the replayed task's attempt.
        recorded: the recorded call, rendered (None if the history has no step there).
        actual: the call the code makes now, rendered (None if the code never made it).
    """

    def __init__(self, message: str, *, seq: int, recorded: str | None,
                 actual: str | None) -> None:
        super().__init__(message)
        self.seq = seq
        self.recorded = recorded
        self.actual = actual


@dataclass(frozen=True)
class ReplayResult:
    """What the code did on replay.

    Attributes:
        value: what the code returned (None if it raised or stopped at the frontier).
        error: the exception the code raised, if any.
        finished: the code ran to its end. False when it stopped where the history ends
            because the execution is still running (it waits on a step not finished yet).
        stopped_at: the step it stopped at when not finished.
        steps_replayed: how many recorded steps were matched.
        recorded_state: the replayed task's recorded state.
        recorded_value: its recorded result, decoded (None unless completed).
        recorded_error: its recorded error, decoded (None unless failed).
    """

    value: Any
    error: BaseException | None
    finished: bool
    stopped_at: int | None
    steps_replayed: int
    recorded_state: str
    recorded_value: Any = None
    recorded_error: BaseException | None = None

    @property
    def outcome_matches(self) -> bool:
        """Whether the code ended as recorded: the same value, or an error of the same type
        and message. False while the recorded task is unfinished."""
        if not self.finished:
            return False
        if self.recorded_state == "completed":
            return self.error is None and bool(self.value == self.recorded_value)
        if self.recorded_state == "failed" and self.recorded_error is not None:
            return (self.error is not None
                    and type(self.error).__name__ == type(self.recorded_error).__name__
                    and str(self.error) == str(self.recorded_error))
        return False


# -- reading histories -----------------------------------------------------------------------------
def load_history(source: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """A history as a dict, from a dict, a JSON file's path, or JSON text.

    Raises:
        ValueError: not a Stent history (its ``format`` is not ``stent.history/1``).
    """
    if isinstance(source, Mapping):
        data: Any = dict(source)
    elif isinstance(source, str) and source.lstrip().startswith("{"):
        data = json.loads(source)
    else:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != HISTORY_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not a Stent history: format {found!r}, expected {HISTORY_FORMAT!r} "
                         "(export one with Stent.history(id) or 'stent history export ID')")
    return cast(dict[str, Any], data)


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def _time(value: str | None) -> datetime:
    return datetime.fromisoformat(value) if value else datetime.now(UTC)


@dataclass(frozen=True)
class _Recorded:
    """One task of a history."""

    id: str
    execution_id: str
    parent_id: str | None
    parent_attempt: int
    seq: int
    step_name: str
    kind: str
    state: str
    attempt: int
    arg_digest: str
    args: bytes
    result: bytes | None
    error: bytes | None
    created_at: datetime

    @classmethod
    def parse(cls, execution_id: str, raw: Mapping[str, Any]) -> _Recorded:
        return cls(
            id=raw["id"], execution_id=execution_id, parent_id=raw.get("parent_id"),
            parent_attempt=int(raw.get("parent_attempt") or 0), seq=int(raw.get("seq") or 0),
            step_name=raw["step_name"], kind=raw.get("kind") or TaskKind.FUNCTION,
            state=raw["state"], attempt=int(raw.get("attempt") or 1),
            arg_digest=raw.get("arg_digest") or "", args=_bytes(raw.get("args")) or b"",
            result=_bytes(raw.get("result")), error=_bytes(raw.get("error")),
            created_at=_time(raw.get("created_at")),
        )

    def record(self, *, state: str | None = None) -> TaskRecord:
        """The task as the engine's step machinery expects it from storage."""
        key = (self.execution_id if self.parent_id is None
               else f"{self.parent_id}:{self.parent_attempt}:{self.seq}")
        return TaskRecord(
            id=self.id, execution_id=self.execution_id, parent_id=self.parent_id,
            parent_attempt=self.parent_attempt, seq=self.seq, step_name=self.step_name,
            kind=self.kind, state=state or self.state, args=self.args,
            arg_digest=self.arg_digest, created_at=self.created_at, due_at=self.created_at,
            result=self.result, error=self.error, attempt=self.attempt, fence=1,
            idempotency_key=key,
        )


# -- rendering calls -------------------------------------------------------------------------------
def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _LONGEST_VALUE else text[:_LONGEST_VALUE - 3] + "..."


@dataclass(frozen=True)
class _Call:
    """A call decoded for people to read."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    undecodable: str | None = None

    @classmethod
    def decode(cls, serializer: Serializer, name: str, kind: str, payload: bytes) -> _Call:
        try:
            if kind == TaskKind.SLEEP:
                return cls(name, (serializer.loads(payload),))
            if kind == TaskKind.VALUE or not payload:
                return cls(name)
            args, kwargs = decode_call(cast("Stent", _Codec(serializer)), payload)
            return cls(name, args, kwargs)
        except Exception as exc:  # show what we can: the digest still decided
            return cls(name, undecodable=f"{type(exc).__name__}: {exc}")

    def render(self) -> str:
        if self.undecodable is not None:
            return f"{self.name}(<undecodable arguments: {self.undecodable}>)"
        parts = [_short(a) for a in self.args]
        parts += [f"{k}={_short(v)}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"

    def differences(self, other: _Call) -> list[str]:
        """How ``other`` (the actual call) differs from this recorded one."""
        if self.name != other.name:
            return [f"the function differs: recorded {self.name}, the code calls {other.name}"]
        if self.undecodable is not None or other.undecodable is not None:
            return ["the arguments differ (their digests do not match)"]
        out: list[str] = []
        if len(self.args) != len(other.args):
            out.append(f"recorded {len(self.args)} positional arguments, the code passes "
                       f"{len(other.args)}")
        for i, (old, new) in enumerate(zip(self.args, other.args, strict=False)):
            if old != new or type(old) is not type(new):
                out.append(f"argument {i + 1}: recorded {_short(old)}, actual {_short(new)}")
        for key in sorted(set(self.kwargs) | set(other.kwargs)):
            old, new = self.kwargs.get(key, "<absent>"), other.kwargs.get(key, "<absent>")
            if old != new or type(old) is not type(new):
                out.append(f"keyword {key!r}: recorded {_short(old)}, actual {_short(new)}")
        return out or ["the encoded arguments differ, though they decode to equal values "
                       "(key order, or a type the serializer tells apart?)"]


class _Codec:
    """Just enough of an executor for ``decode_call``."""

    def __init__(self, serializer: Serializer) -> None:
        self.serializer = serializer


# -- the replay session: storage answered from the history -----------------------------------------
class _Session:
    """The history of one task attempt, answering the step machinery's storage calls."""

    def __init__(self, target: _Recorded, attempt: int, steps: dict[int, _Recorded],
                 serializer: Serializer, running: bool) -> None:
        self.target = target
        self.attempt = attempt
        self.steps = steps
        self.serializer = serializer
        self.running = running
        self.matched: set[int] = set()
        self.calls = 0
        self.frontier: int | None = None
        self.divergence: HistoryDivergence | None = None
        self._parked: list[asyncio.Future[Any]] = []

    def on_call(self, new: NewTask) -> tuple[TaskRecord, bool]:
        """The code makes the call ``new``: answer it from the history, or diverge."""
        self.calls += 1
        if self.divergence is not None:
            raise self.divergence
        seq = new.seq
        rec = self.steps.get(seq)
        if rec is None:
            if self.running:
                # Past the end of a history that is still being written: this is where the
                # execution is now. Values are just computed; other calls wait forever.
                self._reached(seq)
                born = _Recorded.parse(self.target.execution_id, {
                    "id": new.id, "parent_id": new.parent_id,
                    "parent_attempt": new.parent_attempt, "seq": seq,
                    "step_name": new.step_name, "kind": new.kind, "state": new.state,
                    "arg_digest": new.arg_digest, "args": None, "result": None, "error": None,
                })
                return born.record(), new.kind == TaskKind.VALUE
            raise self._diverge(seq, None, new)
        if rec.step_name != new.step_name or rec.arg_digest != new.arg_digest:
            raise self._diverge(seq, rec, new)
        self.matched.add(seq)
        if rec.state not in TERMINAL_TASK_STATES:
            self._reached(seq)
        return rec.record(), False

    def _reached(self, seq: int) -> None:
        if self.frontier is None or seq < self.frontier:
            self.frontier = seq

    def park(self) -> asyncio.Future[Any]:
        """A wait on a step the history has not finished: it never ends."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._parked.append(fut)
        return fut

    def close(self) -> None:
        """Unwind every parked wait."""
        for fut in self._parked:
            fut.cancel()

    def _header(self, seq: int) -> str:
        t = self.target
        task = "" if t.id == t.execution_id else f", task {t.id}"
        return (f"replay of {t.step_name} (execution {t.execution_id}{task}, attempt "
                f"{self.attempt}) diverged at step {seq}:")

    def _diverge(self, seq: int, rec: _Recorded | None, new: NewTask | None) -> HistoryDivergence:
        recorded = (None if rec is None
                    else _Call.decode(self.serializer, rec.step_name, rec.kind, rec.args))
        actual = (None if new is None
                  else _Call.decode(self.serializer, new.step_name, new.kind, new.args))
        lines = [self._header(seq)]
        if recorded is None:
            last = max(self.steps, default=None)
            ends = "has no steps" if last is None else f"ends at step {last}"
            lines.append(f"  recorded: nothing (the history {ends} and the task is "
                         f"{self.target.state})")
        else:
            lines.append(f"  recorded: {recorded.render()}")
        lines.append(f"  actual:   {actual.render()}" if actual is not None
                     else "  actual:   nothing (the code ended without making this call)")
        if recorded is not None and actual is not None:
            lines += [f"  {d}" for d in recorded.differences(actual)]
        elif recorded is None:
            lines.append("  the code makes a call the history does not have")
        else:
            lines.append("  the history has a call the code no longer makes")
        lines.append(
            f"Steps before {seq} matched the history. Code that changes the order, the "
            "functions or the arguments of durable calls cannot resume executions started by "
            "the old code: keep the old path for them, or give the new code a new name."
        )
        error = HistoryDivergence(
            "\n".join(lines), seq=seq,
            recorded=recorded.render() if recorded is not None else None,
            actual=actual.render() if actual is not None else None,
        )
        if self.divergence is None:
            self.divergence = error
        return error

    def missing_call(self, seq: int) -> HistoryDivergence:
        """The code ended without making the call recorded at ``seq``."""
        return self._diverge(seq, self.steps[seq], None)


class _ReplayBackend:
    """Storage for the step machinery: the history."""

    def __init__(self, session: _Session) -> None:
        self._session = session

    async def create_step(self, parent_id: str, fence: int, new: NewTask, now: datetime,
                          lease: Any = None) -> tuple[TaskRecord, bool]:
        return self._session.on_call(new)

    def claim(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never claims
        raise RuntimeError("a replay claims nothing")


class _ReplayHub:
    """Completion waits: only unfinished recorded steps are ever awaited."""

    def __init__(self, session: _Session) -> None:
        self._session = session

    async def wait(self, task_id: str) -> Any:
        return await self._session.park()


class _ReplayExecutor:
    """The parts of ``Stent`` that the step machinery reads."""

    def __init__(self, serializer: Serializer, session: _Session) -> None:
        self.serializer = serializer
        self.max_payload_bytes = 1 << 62  # the digests decide; a replay stores nothing
        self.clock = SystemClock()
        self.backend = _ReplayBackend(session)
        self.hub = _ReplayHub(session)
        self.tracing = Tracing.off()  # a replay makes no spans

    def publish(self, channel: str, task_id: str) -> None:
        return None

    def metric(self, name: str, **kwargs: Any) -> None:
        return None


class _ReplayWorker:
    """The parts of ``Worker`` that the step machinery calls: a worker that runs nothing."""

    def reserve_local_slot(self, new: NewTask) -> None:
        return None

    def release_reserved_slot(self) -> None:
        return None

    def run_reserved(self, task: TaskRecord) -> None:
        return None

    def adopt_step_after_cancel(self, write: Any) -> None:
        return None

    def task_started_waiting(self, ctx: TaskContext) -> None:
        return None

    def task_stopped_waiting(self, ctx: TaskContext) -> bool:
        return True  # a replay runs alone: it always resumes

    def timer_scheduled(self, due_at: datetime) -> None:
        return None

    def wake(self) -> None:
        return None


# -- running a replay --------------------------------------------------------------------------
def _body(fn: Any, name: str, registry: FunctionRegistry | None
          ) -> Callable[..., Coroutine[Any, Any, Any]]:
    if fn is None:
        return (registry or default_registry).get(name).fn
    if isinstance(fn, DurableFunction):
        if fn.name != name:
            raise ValueError(f"the history is of {name!r}, but the function given is "
                             f"{fn.name!r}")
        return fn.fn
    if not callable(fn):
        raise TypeError(f"fn must be a durable function or an async callable, not {fn!r}")
    return cast(Callable[..., Coroutine[Any, Any, Any]], fn)


def _decoded(serializer: Serializer, data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return serializer.loads(data)
    except Exception as exc:
        return f"<undecodable result: {exc}>"


async def replay_async(
    history: Mapping[str, Any] | str | os.PathLike[str],
    fn: Any = None,
    *,
    serializer: str | Serializer = "json",
    pickle_key: bytes | str | None = None,
    registry: FunctionRegistry | None = None,
    task_id: str | None = None,
    attempt: int | None = None,
    timeout: float = 30.0,
) -> ReplayResult:
    """Run ``fn`` against ``history`` without running any step (see :func:`replay`)."""
    data = load_history(history)
    ser = resolve_serializer(serializer, pickle_key=pickle_key)
    eid = str(data["execution_id"])
    tasks = [_Recorded.parse(eid, raw) for raw in data.get("tasks", [])]
    if task_id is None:
        targets = [t for t in tasks if t.parent_id is None]
    else:
        targets = [t for t in tasks if t.id == task_id]
    if not targets:
        raise ValueError(f"the history of execution {eid} has no task "
                         f"{task_id or '(root)'}")
    target = targets[0]
    n = target.attempt if attempt is None else attempt
    body = _body(fn, target.step_name, registry)
    steps = {t.seq: t for t in tasks if t.parent_id == target.id and t.parent_attempt == n}
    running = target.state not in TERMINAL_TASK_STATES and n == target.attempt
    session = _Session(target, n, steps, ser, running)
    executor = _ReplayExecutor(ser, session)
    me = target.record(state="running")
    me.attempt = n
    ctx = TaskContext(executor=cast("Stent", executor), worker=cast("Worker", _ReplayWorker()),
                      task=me, history={})
    args, kwargs = decode_call(cast("Stent", executor), target.args)

    async def run() -> Any:
        _current.set(ctx)  # this task's own context copy: nothing leaks out
        return await body(*args, **kwargs)

    loop = asyncio.get_running_loop()
    job = loop.create_task(run(), name=f"stent-replay-{target.id}")
    deadline = loop.time() + timeout
    stopped = False
    seen = -1
    try:
        while not job.done():
            await asyncio.wait({job}, timeout=0.005)
            if job.done():
                break
            if session.frontier is not None and session.calls == seen:
                stopped = True  # parked where the history ends, and nothing else moves
                break
            seen = session.calls
            if loop.time() > deadline:
                raise TimeoutError(
                    f"replay of {target.step_name} did not end within {timeout}s: the code "
                    "waits on something that is not a durable step"
                )
    finally:
        if not job.done():
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)
        session.close()
    value: Any = None
    error: BaseException | None = None
    if not stopped:
        error = job.exception()
        value = None if error is not None else job.result()
    if session.divergence is not None:
        raise session.divergence from error
    if not stopped:
        missing = sorted(set(steps) - session.matched)
        if missing:
            raise session.missing_call(missing[0]) from error
    return ReplayResult(
        value=value, error=error, finished=not stopped,
        stopped_at=session.frontier if stopped else None, steps_replayed=len(session.matched),
        recorded_state=target.state,
        recorded_value=_decoded(ser, target.result) if target.state == "completed" else None,
        recorded_error=decode_error(target.error) if target.error is not None
        and target.state == "failed" else None,
    )


def replay(
    history: Mapping[str, Any] | str | os.PathLike[str],
    fn: Any = None,
    **options: Any,
) -> ReplayResult:
    """Run the workflow code against a recorded history without running any step.

    Every durable call the code makes is matched with the step recorded at its key (same
    function, same arguments) and answered with the recorded result or error. Where the
    execution was still running, the replay stops at the first step the history has not
    finished. Works from synchronous and asynchronous code (inside a running event loop the
    replay runs on its own loop in a helper thread); ``await replay_async(...)`` is the
    coroutine form.

    Args:
        history: a history dict (``await executor.history(id)``), a JSON file's path (from
            ``stent history export ID > file.json``) or JSON text.
        fn: the workflow: a durable function (its name must match the history's), a plain
            ``async def`` body, or None to look the recorded name up in ``registry``.
        **options: ``serializer`` (default ``"json"``; the one that wrote the history),
            ``pickle_key``, ``registry``, ``task_id`` (replay another task of the execution,
            e.g. a child workflow; default the root), ``attempt`` (default the last one),
            ``timeout`` (real seconds, default 30).

    Returns:
        A :class:`ReplayResult`: the value or error of the code, and the recorded outcome.

    Raises:
        HistoryDivergence: a ``NonDeterminismError`` at the first divergence: a call whose
            function or arguments differ from the recorded one, a call the history does not
            have (unless the execution is still running), or a recorded call the code ended
            without making. Its message shows the recorded and the actual call.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(replay_async(history, fn, **options))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stent-replay") as pool:
        return pool.submit(asyncio.run, replay_async(history, fn, **options)).result()

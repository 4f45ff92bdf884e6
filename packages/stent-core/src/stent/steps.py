"""Durable steps: step keys, replay matching, and the built-in steps.

A step's key is (parent task id, parent attempt, sequence number). The sequence number is
taken when the call is made, in program order. On replay, a key that is already recorded
is never started again: a finished step hands back its recorded outcome, an unfinished one
is awaited, and a recorded step whose function or arguments differ from the call being made
now raises ``NonDeterminismError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import faults
from .caching import cache_key, uses_cache
from .context import TaskContext
from .errors import (
    ExecutionCancelledError,
    LeaseLostError,
    NonDeterminismError,
    SerializationError,
)
from .records import (
    TERMINAL_TASK_STATES,
    ExecutionEffect,
    NewTask,
    StepRecord,
    TaskKind,
    TaskOutcome,
    TaskRecord,
)
from .serialization import check_payload_size, decode_error, dumps_with_path

if TYPE_CHECKING:
    from .app import Stent
    from .durable import DurableFunction

#: attribute set on an exception raised into a parent by a failed step
STEP_ERROR_ATTR = "__stent_step_task_id__"

_W = TypeVar("_W")

log = logging.getLogger("stent.steps")

SLEEP_STEP = "stent.sleep"
NOW_STEP = "stent.now"
UUID_STEP = "stent.uuid4"
SIGNAL_STEP = "stent.signal"
INCREMENT_STEP = "stent.increment"
SET_STATE_STEP = "stent.set_state"


def encode_call(executor: Stent, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Encode a call's arguments (positional and keyword) into one payload.

    Raises:
        SerializationError: naming the path of the first value that cannot be encoded.
        PayloadTooLargeError: when the payload is over ``max_payload_bytes``.
    """
    ser = executor.serializer
    a = dumps_with_path(ser, tuple(args), "args")
    k = dumps_with_path(ser, dict(kwargs), "kwargs") if kwargs else b""
    payload = len(a).to_bytes(4, "big") + a + k
    check_payload_size(payload, executor.max_payload_bytes, f"the arguments of {name}")
    return payload


def decode_call(executor: Stent, payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Inverse of :func:`encode_call`."""
    if len(payload) < 4:
        raise SerializationError("stored call payload is truncated")
    n = int.from_bytes(payload[:4], "big")
    if n > len(payload) - 4:
        raise SerializationError("stored call payload is truncated")
    ser = executor.serializer
    args = ser.loads(payload[4:4 + n])
    kwargs = ser.loads(payload[4 + n:]) if len(payload) > 4 + n else {}
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise SerializationError("stored call payload does not hold (args, kwargs)")
    return args, kwargs


def call_digest(name: str, payload: bytes) -> str:
    """Digest of a call's function name and encoded arguments, compared on replay."""
    h = hashlib.blake2b(digest_size=16)
    h.update(name.encode())
    h.update(b"\0")
    h.update(payload)
    return h.hexdigest()


def outcome_value(executor: Stent, outcome: TaskOutcome | StepRecord) -> Any:
    """The value of a finished step, or raise its error (marked as a step error)."""
    if outcome.state == "completed":
        assert outcome.result is not None
        return executor.serializer.loads(outcome.result)
    if outcome.state == "cancelled":
        raise ExecutionCancelledError(f"step {outcome.task_id} was cancelled")
    err = decode_error(outcome.error) if outcome.error is not None else RuntimeError(
        f"step {outcome.task_id} failed without a stored error"
    )
    try:
        setattr(err, STEP_ERROR_ATTR, outcome.task_id)
    except Exception:  # some exception types refuse new attributes; marking is best-effort
        pass
    raise err


def _check_replay(ctx: TaskContext, seq: int, rec: StepRecord, name: str, digest: str) -> None:
    if rec.step_name == name and rec.arg_digest == digest:
        return
    what = "function" if rec.step_name != name else "arguments"
    err = NonDeterminismError(
        f"replay of task {ctx.task.id} ({ctx.task.step_name}) diverged at step {seq} "
        f"(attempt {ctx.task.attempt}): recorded call {rec.step_name} (digest "
        f"{rec.arg_digest}), but the code now calls {name} (digest {digest}); the "
        f"{what} differ. Code that changes the order or arguments of durable calls cannot "
        "resume executions started by the old code"
    )
    ctx.nondeterminism = err
    raise err


def _as_step(task: TaskRecord) -> StepRecord:
    """A step row found at its key (inserted by an earlier run), for the replay check."""
    return StepRecord(task.id, task.seq, task.step_name, task.kind, task.arg_digest,
                      task.state, task.result, task.error)


def _new_step(
    ctx: TaskContext, seq: int, name: str, kind: str, payload: bytes, digest: str,
    now: datetime, *, due_at: datetime | None = None, fn: DurableFunction[..., Any] | None = None,
    state: str = "pending", result: bytes | None = None,
) -> NewTask:
    t = ctx.task
    return NewTask(
        id=uuid.uuid4().hex, parent_id=t.id, parent_attempt=t.attempt, seq=seq,
        step_name=name, kind=kind, args=payload, arg_digest=digest,
        due_at=due_at or now,
        queue=fn.queue if fn else None, tags=fn.tags if fn else (),
        priority=fn.priority if fn else t.priority,
        retry_policy=fn.retry_policy.to_dict() if fn else {},
        timeout_s=fn.timeout.total_seconds() if fn and fn.timeout else None,
        max_concurrent=fn.max_concurrent if fn else None,
        idempotency_key=f"{t.id}:{t.attempt}:{seq}",
        state=state, result=result,
        # the caller's current span (its stent.step span): the step's span will be its child
        trace_context=ctx.executor.tracing.current_traceparent(),
    )


def _awaits_written_step(ctx: TaskContext, new_id: str) -> bool:
    """Whether the caller awaits a step (other than ``new_id``) that is or is being written
    to storage, rather than one running inline here, unwritten; or may await one: its
    replayed history holds an unfinished step (a wait begun in an earlier run, which this
    run may not have reached yet)."""
    if ctx.history_unfinished is None:
        ctx.history_unfinished = any(
            rec.state not in TERMINAL_TASK_STATES
            for rec in ctx.history.values())
    if ctx.history_unfinished:
        return True
    running = getattr(ctx.worker, "running", {})
    for child_id in ctx.awaiting:
        if child_id != new_id:
            rt = running.get(child_id)
            if rt is None or rt.materialized:
                return True
    return False


async def _await_child(ctx: TaskContext, child_id: str) -> TaskOutcome:
    with ctx.waiting_on(child_id):
        return await ctx.executor.hub.wait(child_id)


def start_step(
    ctx: TaskContext, fn: DurableFunction[..., Any], args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Coroutine[Any, Any, Any]:
    """Make a durable call from inside a task: take its sequence number now, encode its
    arguments now (a bad argument fails here, before anything is written), and return the
    coroutine that records or replays it."""
    seq = ctx.take_seq()
    payload = encode_call(ctx.executor, fn.name, args, kwargs)
    if uses_cache(fn):
        cache_key(fn, ctx.executor.serializer, args, kwargs)  # a bad key fails at the call
    return _run_step(ctx, fn, seq, payload, call_digest(fn.name, payload))


async def _run_step(
    ctx: TaskContext, fn: DurableFunction[..., Any], seq: int, payload: bytes, digest: str
) -> Any:
    executor = ctx.executor
    if ctx.task.fence == 0:
        await ctx.ensure_written()
    rec = ctx.history.get(seq)
    if rec is not None:
        _check_replay(ctx, seq, rec, fn.name, digest)
        if rec.state in TERMINAL_TASK_STATES:
            return outcome_value(executor, rec)
        return outcome_value(executor, await _await_child(ctx, rec.task_id))

    now = executor.clock.now()
    new = _new_step(ctx, seq, fn.name, TaskKind.FUNCTION, payload, digest, now, fn=fn)
    # Count the wait before the row exists, so that the slot is free for the step itself.
    with ctx.waiting_on(new.id):
        # A capped function goes through storage, where the claim counts its cap.
        # So does a cached one: its key is claimed by a written task.
        # And so does every step of a task taken over after a crash: written before it runs,
        # a step that kills its worker is counted as the suspect (max_crash_recoveries),
        # not its caller. And a step called while its caller awaits a written step (a
        # durable sleep in the background, say): a death during an inline run would be
        # charged to nobody (the caller awaits an unfinished step), and the step would run
        # inline again and again without ever reaching max_crash_recoveries.
        lease = (ctx.worker.reserve_local_slot(new)
                 if fn.max_concurrent is None and not uses_cache(fn)
                 and ctx.task.crash_count == 0 and not _awaits_written_step(ctx, new.id)
                 else None)
        if lease is not None:
            # The hot path: run the step here now and write it once, with its outcome.
            task = ctx.worker.run_inline(ctx, new, lease)
            if faults.plan is not None:
                faults.plan_hit_sync("after_step_started", step=fn.name, task_id=task.id)
            return outcome_value(executor, await _finished_or_wait(ctx, task))
        # Otherwise insert it pending for a claim loop (this one, or another process's).
        # The insert is shielded: if this task is cancelled meanwhile (suspension, drain)
        # it may still commit, and a suspension waits for it (ctx.inflight).
        task, created = await _insert_at_key(
            ctx, seq, fn.name, digest,
            lambda: executor.backend.create_step(ctx.task.id, ctx.task.fence, new, now))
        if created:
            ctx.worker.wake()
            executor.publish("work", task.id)
            if faults.plan is not None:
                faults.plan_hit_sync("after_step_started", step=fn.name, task_id=task.id)
        outcome = await _finished_or_wait(ctx, task)
    return outcome_value(executor, outcome)


async def _insert_or_stop(ctx: TaskContext, make: Callable[[], Awaitable[_W]]) -> _W:
    """Write a step (or recorded value) under this task, retrying storage errors with backoff
    for as long as this task's lease lasts: the insert is idempotent on its step key, and a
    failure must not reach user code (it would fail the attempt, and the retry would run
    the steps already done again). If storage refuses it because this task lost its lease
    or its execution is stopping, or the lease runs out first, stop this task the way a
    cancellation would. Each attempt is shielded and tracked in ``ctx.inflight``: if this
    task is cancelled meanwhile (suspension, drain) it may still commit, and a suspension
    waits for it."""
    delay = 0.05
    while True:
        write = asyncio.ensure_future(make())
        ctx.inflight.add(write)
        write.add_done_callback(ctx.inflight.discard)
        try:
            return await asyncio.shield(write)
        except LeaseLostError:
            _stop_for_lease(ctx)
            raise asyncio.CancelledError() from None
        except Exception as exc:
            until = ctx.task.lease_expires_at
            if until is None or ctx.executor.clock.now() >= until:
                log.warning("giving up writing a step of task %s after its lease ran out: %s",
                            ctx.task.id, exc, extra={"execution_id": ctx.task.execution_id,
                                                     "task_id": ctx.task.id,
                                                     "worker_id": ctx.worker.worker_id})
                _stop_for_lease(ctx)
                raise asyncio.CancelledError() from None
            ctx.worker.storage_trouble(exc)
            await ctx.executor.clock.sleep(delay)
            delay = min(5.0, delay * 2)


async def _insert_at_key(
    ctx: TaskContext, seq: int, name: str, digest: str,
    make: Callable[[], Awaitable[tuple[TaskRecord, bool]]],
) -> tuple[TaskRecord, bool]:
    """Insert one step at its key (:func:`_insert_or_stop`); a row already there (an earlier
    run wrote it) must be the same call, or this replay is non-deterministic."""
    task, created = await _insert_or_stop(ctx, make)
    if not created:
        _check_replay(ctx, seq, _as_step(task), name, digest)
    return task, created


def _stop_for_lease(ctx: TaskContext) -> None:
    rt = ctx.worker.running.get(ctx.task.id)
    if rt is not None and rt.ctx is ctx and rt.stop_reason is None:
        rt.stop_reason = "lease_lost"


async def _finished_or_wait(ctx: TaskContext, task: TaskRecord) -> TaskOutcome:
    if task.state in TERMINAL_TASK_STATES:
        return TaskOutcome(task.id, task.state, task.result, task.error)
    if task.id not in ctx.awaiting:
        return await _await_child(ctx, task.id)
    return await ctx.executor.hub.wait(task.id)


async def record_value(ctx: TaskContext, name: str, make: Any) -> Any:
    """A value computed once and replayed (``Stent.now()``, ``Stent.uuid4()``)."""
    executor = ctx.executor
    seq = ctx.take_seq()
    if ctx.task.fence == 0:
        await ctx.ensure_written()
    rec = ctx.history.get(seq)
    digest = call_digest(name, b"")
    if rec is not None:
        _check_replay(ctx, seq, rec, name, digest)
        return outcome_value(executor, rec)
    value = make()
    result = dumps_with_path(executor.serializer, value, name)
    now = executor.clock.now()
    new = _new_step(ctx, seq, name, TaskKind.VALUE, b"", digest, now,
                    state="completed", result=result)
    task, created = await _insert_at_key(
        ctx, seq, name, digest,
        lambda: executor.backend.create_step(ctx.task.id, ctx.task.fence, new, now))
    return value if created else outcome_value(executor, _as_step(task))


async def durable_sleep(ctx: TaskContext, delay: timedelta) -> None:
    """A durable timer: a ``sleep`` step due at now + ``delay``, fired by any worker."""
    executor = ctx.executor
    seq = ctx.take_seq()
    if ctx.task.fence == 0:
        await ctx.ensure_written()
    payload = dumps_with_path(executor.serializer, delay.total_seconds(), "duration")
    digest = call_digest(SLEEP_STEP, payload)
    rec = ctx.history.get(seq)
    if rec is not None:
        _check_replay(ctx, seq, rec, SLEEP_STEP, digest)
        if rec.state not in TERMINAL_TASK_STATES:
            if rec.due_at is not None:
                ctx.worker.timer_scheduled(rec.due_at)
            outcome_value(executor, await _await_child(ctx, rec.task_id))
        return
    now = executor.clock.now()
    new = _new_step(ctx, seq, SLEEP_STEP, TaskKind.SLEEP, payload, digest, now,
                    due_at=now + delay)
    with ctx.waiting_on(new.id):
        task, _ = await _insert_at_key(
            ctx, seq, SLEEP_STEP, digest,
            lambda: executor.backend.create_step(ctx.task.id, ctx.task.fence, new, now))
        ctx.worker.timer_scheduled(task.due_at)
        outcome_value(executor, await _finished_or_wait(ctx, task))


async def wait_signal(ctx: TaskContext, name: str, timeout: timedelta | None) -> Any:
    """A signal wait: a ``signal`` step that consumes the next signal ``name`` sent to this
    execution (one buffered before the wait included), or fails with ``SignalTimeoutError``
    when ``timeout`` passes first."""
    executor = ctx.executor
    seq = ctx.take_seq()
    if ctx.task.fence == 0:
        await ctx.ensure_written()
    timeout_s = timeout.total_seconds() if timeout is not None else None
    payload = dumps_with_path(executor.serializer, [name, timeout_s], "signal")
    digest = call_digest(SIGNAL_STEP, payload)
    rec = ctx.history.get(seq)
    if rec is not None:
        _check_replay(ctx, seq, rec, SIGNAL_STEP, digest)
        if rec.state in TERMINAL_TASK_STATES:
            return outcome_value(executor, rec)
        if timeout is not None and rec.due_at is not None:
            ctx.worker.timer_scheduled(rec.due_at)
        return outcome_value(executor, await _await_child(ctx, rec.task_id))
    now = executor.clock.now()
    new = _new_step(ctx, seq, SIGNAL_STEP, TaskKind.SIGNAL, payload, digest, now,
                    due_at=now + timeout if timeout is not None else now,
                    state="pending" if timeout is not None else "waiting")
    with ctx.waiting_on(new.id):
        # Watch before the row exists: a signal delivered between the insert and the wait
        # (by this process or, through a notification, another) cannot slip past.
        watched = new.id
        fut = executor.hub.watch(watched)
        try:
            task, _ = await _insert_at_key(
                ctx, seq, SIGNAL_STEP, digest,
                lambda: executor.backend.create_signal_wait(
                    ctx.task.id, ctx.task.fence, new, name, now))
            if task.state in TERMINAL_TASK_STATES:
                outcome = TaskOutcome(task.id, task.state, task.result, task.error)
            else:
                if timeout is not None:
                    ctx.worker.timer_scheduled(task.due_at)
                if task.id != watched:
                    executor.hub.unwatch(watched, fut)
                    watched = task.id
                    fut = executor.hub.watch(watched)
                recent = executor.hub.recent(watched)
                outcome = recent if recent is not None else await fut
        finally:
            executor.hub.unwatch(watched, fut)
    return outcome_value(executor, outcome)


async def record_effect(ctx: TaskContext, effect: ExecutionEffect) -> None:
    """Change the execution's counters or custom state exactly once: the change is applied
    in the same transaction as the step that records it, and a replay applies nothing."""
    executor = ctx.executor
    seq = ctx.take_seq()
    if ctx.task.fence == 0:
        await ctx.ensure_written()
    name = INCREMENT_STEP if effect.kind == "increment" else SET_STATE_STEP
    args = [effect.name, effect.delta] if effect.kind == "increment" else [
        effect.name, effect.value_json]
    payload = dumps_with_path(executor.serializer, args, name)
    digest = call_digest(name, payload)
    rec = ctx.history.get(seq)
    if rec is not None:
        _check_replay(ctx, seq, rec, name, digest)
        return
    now = executor.clock.now()
    result = dumps_with_path(executor.serializer, None, name)
    new = _new_step(ctx, seq, name, TaskKind.VALUE, payload, digest, now,
                    state="completed", result=result)
    await _insert_at_key(
        ctx, seq, name, digest,
        lambda: executor.backend.record_effect(ctx.task.id, ctx.task.fence, new, effect, now))


#: children of one ``map`` inserted (and awaited) per batch: one write each, and at most this
#: many outstanding waits per mapping task however long the input is
MAP_BATCH = 500


def start_map(
    ctx: TaskContext, fn: DurableFunction[..., Any],
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
) -> Coroutine[Any, Any, list[Any]]:
    """A fan-out from inside a task: sequence numbers for every call are taken now, in input
    order, and every argument set is encoded now (a bad one fails before anything is
    written); the coroutine then inserts the children in batches of ``MAP_BATCH`` (one write
    each) and awaits each batch before the next, so memory stays bounded."""
    items: list[tuple[int, bytes, str]] = []
    for args, kwargs in calls:
        payload = encode_call(ctx.executor, fn.name, args, kwargs)
        if uses_cache(fn):
            cache_key(fn, ctx.executor.serializer, args, kwargs)
        items.append((ctx.take_seq(), payload, call_digest(fn.name, payload)))
    return _run_map(ctx, fn, items)


async def _run_map(
    ctx: TaskContext, fn: DurableFunction[..., Any], items: list[tuple[int, bytes, str]]
) -> list[Any]:
    executor = ctx.executor
    if ctx.task.fence == 0:
        await ctx.ensure_written()
    values: list[Any] = []
    for start in range(0, len(items), MAP_BATCH):
        outcomes = await _map_batch(ctx, fn, items[start:start + MAP_BATCH])
        # decode in input order: the first failure (in input order) is raised
        values.extend(outcome_value(executor, o) for o in outcomes)
    return values


async def _map_batch(
    ctx: TaskContext, fn: DurableFunction[..., Any], batch: list[tuple[int, bytes, str]]
) -> list[TaskOutcome | StepRecord]:
    executor = ctx.executor
    hub = executor.hub
    results: list[TaskOutcome | StepRecord | None] = [None] * len(batch)
    waits: dict[int, str] = {}  # index in batch -> task id still to await
    news: list[NewTask] = []
    new_index: list[int] = []
    now = executor.clock.now()
    for i, (seq, payload, digest) in enumerate(batch):
        rec = ctx.history.get(seq)
        if rec is not None:
            _check_replay(ctx, seq, rec, fn.name, digest)
            if rec.state in TERMINAL_TASK_STATES:
                results[i] = rec
            else:
                waits[i] = rec.task_id
            continue
        news.append(_new_step(ctx, seq, fn.name, TaskKind.FUNCTION, payload, digest, now, fn=fn))
        new_index.append(i)
    with contextlib.ExitStack() as stack:
        # Watch and count the waits before the rows exist: no outcome can slip past, and the
        # mapping task's slot is free for its children.
        futs: dict[str, asyncio.Future[TaskOutcome]] = {}
        for new in news:
            stack.enter_context(ctx.waiting_on(new.id))
            futs[new.id] = hub.watch(new.id)
            stack.callback(hub.unwatch, new.id, futs[new.id])
        for task_id in waits.values():
            if task_id not in futs:
                stack.enter_context(ctx.waiting_on(task_id))
                futs[task_id] = hub.watch(task_id)
                stack.callback(hub.unwatch, task_id, futs[task_id])
        if news:
            inserted = await _insert_or_stop(
                ctx, lambda: executor.backend.create_steps(
                    ctx.task.id, ctx.task.fence, news, now))
            any_created = False
            for i, new, (task, created) in zip(new_index, news, inserted, strict=True):
                seq, _, digest = batch[i]
                if not created:
                    rec = _as_step(task)
                    _check_replay(ctx, seq, rec, fn.name, digest)
                if task.state in TERMINAL_TASK_STATES:
                    results[i] = TaskOutcome(task.id, task.state, task.result, task.error)
                else:
                    waits[i] = task.id
                    if task.id != new.id:
                        stack.enter_context(ctx.waiting_on(task.id))
                        futs[task.id] = hub.watch(task.id)
                        stack.callback(hub.unwatch, task.id, futs[task.id])
                any_created = any_created or created
            if any_created:
                ctx.worker.wake()
                executor.publish("work", "")
        for i, task_id in waits.items():
            recent = hub.recent(task_id)
            results[i] = recent if recent is not None else await futs[task_id]
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]

"""Running one claimed task: resolve its function, decode its arguments, replay its recorded
steps, call it, and record the outcome with one fenced write."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import faults
from .caching import cache_key, user_key, uses_cache
from .context import TaskContext, _current
from .errors import (
    IdempotencyConflictError,
    LeaseLostError,
    NonDeterminismError,
    SerializationError,
    SignalTimeoutError,
    StepTimeoutError,
    UnregisteredFunctionError,
)
from .records import TERMINAL_TASK_STATES, Lease, NewTask, TaskKind, TaskOutcome, TaskRecord
from .retry import RetryPolicy
from .serialization import check_payload_size, dumps_with_path, encode_error
from .steps import STEP_ERROR_ATTR, decode_call

if TYPE_CHECKING:
    from .durable import DurableFunction
    from .worker import Worker

log = logging.getLogger("stent.runner")


@dataclass(eq=False)
class RunningTask:
    """A task this worker holds: its record, its asyncio task, and why it was stopped."""

    record: TaskRecord
    task: asyncio.Task[None] | None = None
    ctx: TaskContext | None = None
    holds_slot: bool = True
    waiting_since: float | None = None
    #: why the engine cancelled it: suspend, lease_lost, shutdown, timeout
    stop_reason: str | None = None
    #: an inline step: run before it is written. ``inline`` is the step to write (born
    #: finished when it ends, or born running if it must exist first); its parent's lease
    #: covers it until then.
    inline: NewTask | None = None
    inline_parent: tuple[str, int] | None = None
    #: whether the row exists (always, except for an inline step not yet written)
    materialized: bool = True
    #: whether its outcome is written
    recorded: bool = False
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: its lease loss has been reported at WARNING (once per loss, by whoever saw it first)
    lease_loss_logged: bool = False
    #: when this run started (engine clock), and how many slow-step warnings it has had
    started_mono: float | None = None
    slow_warnings: int = 0

    def stop(self, reason: str) -> None:
        """Cancel the task's coroutine for ``reason`` (first reason wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()


def log_extra(task: TaskRecord, worker_id: str) -> dict[str, str]:
    """The attributes of every log record about a task (``extra=``): its execution, its id
    and the worker running it. Messages name ids, functions and exception types, never
    argument values or results."""
    return {"execution_id": task.execution_id, "task_id": task.id, "worker_id": worker_id}


def _loggable_reason(reason: str, exc: BaseException) -> str:
    """A dead-letter reason for a log message: one that quotes ``exc``'s message (which may
    quote a value) names its type instead."""
    text = str(exc)
    return reason.replace(text, type(exc).__name__) if text else reason


_policies: dict[tuple[Any, ...], RetryPolicy] = {}


def _policy(task: TaskRecord) -> RetryPolicy:
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                       for k, v in task.retry_policy.items()))
    pol = _policies.get(key)
    if pol is None:
        pol = _policies[key] = RetryPolicy.from_dict(task.retry_policy)
    return pol


class TaskRunner:
    """Runs claimed tasks for one worker."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.executor = worker.executor

    async def run(self, rt: RunningTask) -> None:
        """Run ``rt`` to its outcome and record it, in a ``stent.step`` span when tracing."""
        with self.executor.tracing.task_span(rt.record):
            await self._run(rt)

    async def _run(self, rt: RunningTask) -> None:
        task = rt.record
        ex = self.executor
        extra = log_extra(task, self.worker.worker_id)
        ex.metric("task_claimed", queue=task.queue, step_name=task.step_name, kind=task.kind)
        if task.kind == TaskKind.SLEEP:
            await self._complete(rt, None)
            return
        if task.kind == TaskKind.SIGNAL:
            # claimed only when its timeout is due (a delivered signal completes it in storage)
            await self._fail_final(rt, self._signal_timeout(task), None)
            return
        if task.crash_count > ex.max_crash_recoveries and not await self._bystander(rt):
            err = RuntimeError(
                f"task {task.id} ({task.step_name}) was taken over after its worker died "
                f"{task.crash_count} times, over max_crash_recoveries={ex.max_crash_recoveries}"
            )
            await self._fail_final(rt, err, "poison task: too many crash recoveries")
            return
        fn = ex.registry.find(task.step_name)
        if fn is None:
            err2 = UnregisteredFunctionError(task.step_name, ex.registry.names())
            await self._fail_final(rt, err2, "unregistered function")
            return
        try:
            args, kwargs = decode_call(ex, task.args)
        except Exception as exc:
            await self._fail_final(rt, exc, f"undecodable arguments: {exc}")
            return
        history = {}
        if task.fence > 1:  # claimed before: this attempt may have recorded steps to replay
            try:
                history = {s.seq: s for s in await ex.backend.load_steps(task.id, task.attempt)}
            except Exception as exc:
                log.warning("could not load the history of task %s: %s", task.id, exc,
                            extra=extra)
                await self._release(rt)
                return
        ctx = TaskContext(executor=ex, worker=self.worker, task=task, history=history)
        rt.ctx = ctx
        started = ex.clock.monotonic()
        watchdog = self._start_watchdog(rt, fn.timeout)
        token = _current.set(ctx)
        error: BaseException | None = None
        value: Any = None
        cached: bytes | None = None
        try:
            if faults.plan is not None:
                await faults.plan.hit("before_step", step=task.step_name, task_id=task.id)
            if uses_cache(fn):
                cached = await self._cache_gate(rt, fn, args, kwargs)
            if cached is None:
                value = await fn.fn(*args, **kwargs)
                if faults.plan is not None:
                    await faults.plan.hit("after_step_result", step=task.step_name,
                                          task_id=task.id)
        except asyncio.CancelledError:
            reason = rt.stop_reason
            if reason == "timeout":
                error = StepTimeoutError(
                    f"{task.step_name} (task {task.id}) ran longer than its timeout "
                    f"of {fn.timeout}"
                )
            elif reason == "suspend":
                await self._suspend(rt)
                return
            elif reason == "crash":
                return
            elif reason == "cancel":
                await self._cancelled(rt)
                return
            elif reason == "expired":
                return  # its execution timed out; storage already cancelled it
            elif reason == "give_back":
                # its steps finished while a suspect runs alone on this worker: it resumes
                # (by replay) later, here or elsewhere. The worker cancelled this run; that
                # request may still be pending (the wait ended in this very asyncio task).
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    pass
                if rt.materialized:
                    await self._write(rt, lambda now: self.executor.backend.release_task(
                        task.id, task.fence, now))
                self.executor.publish("work", "")
                return
            elif reason == "lease_lost":
                # the heartbeat that found the loss has warned already: one warning per loss
                log.info("task %s lost its lease; its outcome is discarded", task.id,
                         extra=extra)
                return
            else:
                await self._release(rt)
                raise
        except Exception as exc:
            error = exc
        finally:
            _current.reset(token)
            if watchdog is not None:
                watchdog.cancel()
        if ctx.nondeterminism is not None:
            await self._fail_final(rt, ctx.nondeterminism, "non-determinism on replay")
        elif error is None:
            ex.metric("task_completed", queue=task.queue, step_name=task.step_name,
                      kind=task.kind, duration_s=ex.clock.monotonic() - started)
            if cached is not None:
                await self._record_result(rt, cached)
            else:
                await self._complete(rt, value)
        else:
            await self._fail(rt, error)

    async def _cache_gate(
        self, rt: RunningTask, fn: DurableFunction[..., Any], args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> bytes | None:
        """Before an ``idempotent``/``cached`` body runs: the stored result of its key (a hit),
        or None once this task owns the key and runs the body. While another unfinished task
        owns it, wait for that one and ask again: one key never runs two bodies at once.

        Raises:
            IdempotencyConflictError: the key holds a result of other arguments.
        """
        task = rt.record
        ex = self.executor
        key = cache_key(fn, ex.serializer, args, kwargs)
        ttl = fn.cache_ttl.total_seconds() if fn.cached and fn.cache_ttl is not None else None
        delay = 0.05
        while True:
            try:
                claim = await ex.backend.cache_claim(key, task.id, task.arg_digest, ttl,
                                                     ex.clock.now())
            except Exception as exc:
                # as for step writes: a storage error never fails the attempt; retry while
                # the lease lasts, then stop as if it were lost (another worker takes over)
                if ex.clock.now() >= (task.lease_expires_at or ex.clock.now()):
                    log.warning("giving up the cache lookup of task %s after its lease ran "
                                "out: %s", task.id, exc,
                                extra=log_extra(task, self.worker.worker_id))
                    if rt.stop_reason is None:
                        rt.stop_reason = "lease_lost"
                    raise asyncio.CancelledError() from None
                self.worker.storage_trouble(exc)
                await ex.clock.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            if claim.status == "owner":
                return None
            if claim.status == "hit":
                assert claim.result is not None
                return claim.result
            if claim.status == "conflict":
                shown = user_key(fn, args, kwargs) if fn.idempotency_key_func else key
                raise IdempotencyConflictError(
                    f"{fn.name}: its idempotency key {shown!r} holds the result of a call with "
                    f"other arguments (digest {claim.arg_digest}, this call {task.arg_digest}); "
                    "refusing to return another call's result"
                )
            assert claim.owner_task_id is not None
            await ex.hub.wait(claim.owner_task_id)

    async def _bystander(self, rt: RunningTask) -> bool:
        """Whether a task over ``max_crash_recoveries`` was only awaiting a step when its
        workers died (a step of its current attempt is unfinished): then the step is the
        suspect, with its own count, and the caller resumes to await it. A storage error
        counts as "no": the verdict is the cautious one."""
        task = rt.record
        try:
            steps = await self.executor.backend.load_steps(task.id, task.attempt)
        except Exception:
            return False
        return any(s.state not in TERMINAL_TASK_STATES for s in steps)

    def _signal_timeout(self, task: TaskRecord) -> SignalTimeoutError:
        try:
            name, timeout_s = self.executor.serializer.loads(task.args)
        except Exception:  # an unreadable payload still times out, just less descriptively
            name, timeout_s = "?", None
        return SignalTimeoutError(
            f"no signal {name!r} reached execution {task.execution_id} within "
            f"{timeout_s}s (wait_for_signal timeout)"
        )

    def _start_watchdog(self, rt: RunningTask, timeout: timedelta | None) -> asyncio.Task[None] | None:
        if timeout is None:
            return None

        async def watch() -> None:
            await self.executor.clock.sleep(timeout.total_seconds())
            rt.stop("timeout")

        return asyncio.get_running_loop().create_task(watch())

    # -- recording outcomes ---------------------------------------------------------------------
    async def _complete(self, rt: RunningTask, value: Any) -> None:
        task = rt.record
        ex = self.executor
        try:
            result = dumps_with_path(ex.serializer, value, f"result of {task.step_name}")
            check_payload_size(result, ex.max_payload_bytes, f"the result of {task.step_name}")
        except SerializationError as exc:
            await self._fail_final(rt, exc, f"unserializable result: {exc}")
            return
        await self._record_result(rt, result)

    async def _record_result(self, rt: RunningTask, result: bytes) -> None:
        task = rt.record
        ex = self.executor
        if not rt.materialized:
            ok = await self._write_inline(rt, state="completed", result=result)
        else:
            ok = await self._write(rt, lambda now: ex.backend.complete_task(
                task.id, task.fence, result, now))
        if ok:
            self._finished(TaskOutcome(task.id, "completed", result, None), task.step_name,
                           task.parent_id)

    async def _fail(self, rt: RunningTask, exc: BaseException) -> None:
        task = rt.record
        ex = self.executor
        if isinstance(exc, NonDeterminismError):
            await self._fail_final(rt, exc, "non-determinism on replay")
            return
        if isinstance(exc, IdempotencyConflictError):
            await self._fail_final(rt, exc, None)  # no retry can make the arguments match
            return
        if getattr(exc, STEP_ERROR_ATTR, None) is not None:
            # The error came up unchanged from a step that already used its own retries and
            # wrote its own dead letter: fail this caller once, without a retry or a second
            # dead letter. A caller that wants to retry catches it or wraps it.
            await self._fail_final(rt, exc, None)
            return
        try:
            policy = _policy(task)
        except Exception as bad:  # a stored policy this code cannot read: no retry is sound
            await self._fail_final(rt, exc, f"unreadable retry policy: {bad}"[:500])
            return
        failed_attempts = task.retries + 1
        if policy.should_retry(exc, failed_attempts):
            delay = policy.delay_for(failed_attempts)
            ex.metric("task_failed", queue=task.queue, step_name=task.step_name, kind=task.kind,
                      reason=type(exc).__name__, retrying=True)
            error = encode_error(exc)
            if not rt.materialized:
                ok = await self._write_inline(
                    rt, state="pending", error=error, attempt=task.attempt + 1,
                    retries=task.retries + 1,
                    due_at=ex.clock.now() + timedelta(seconds=delay))
            else:
                ok = await self._write(rt, lambda now: ex.backend.retry_task(
                    task.id, task.fence, error, now + timedelta(seconds=delay), now))
            ex.tracing.task_failed(exc, retrying=True)
            if ok:
                log.info("task %s (%s) failed with %s; attempt %d in %.2fs", task.id,
                         task.step_name, type(exc).__name__, task.attempt + 1, delay,
                         extra=log_extra(task, self.worker.worker_id))
                self.worker.timer_scheduled(ex.clock.now() + timedelta(seconds=delay))
            return
        why = (f"attempts exhausted ({failed_attempts} of {policy.max_attempts})"
               if failed_attempts >= policy.max_attempts
               else f"not retryable: {type(exc).__name__}")
        await self._fail_final(rt, exc, why)

    async def _fail_final(self, rt: RunningTask, exc: BaseException, reason: str | None) -> None:
        task = rt.record
        ex = self.executor
        error = encode_error(exc)
        ex.tracing.task_failed(exc, retrying=False)
        ex.metric("task_failed", queue=task.queue, step_name=task.step_name, kind=task.kind,
                  reason=reason or type(exc).__name__, retrying=False)
        if not rt.materialized:
            ok = await self._write_inline(rt, state="failed", error=error,
                                          dead_letter_reason=reason)
        else:
            ok = await self._write(rt, lambda now: ex.backend.fail_task(
                task.id, task.fence, error, now, reason))
        if ok:
            if reason is not None:
                ex.metric("dead_lettered", queue=task.queue, step_name=task.step_name,
                          kind=task.kind, reason=reason)
                log.warning("task %s (%s) dead-lettered: %s", task.id, task.step_name,
                            _loggable_reason(reason, exc),
                            extra=log_extra(task, self.worker.worker_id))
            self._finished(TaskOutcome(task.id, "failed", None, error), task.step_name,
                           task.parent_id)

    async def _cancelled(self, rt: RunningTask) -> None:
        task = rt.record
        if not rt.materialized:
            return  # never written: nothing to cancel in storage
        ok = await self._write(rt, lambda now: self.executor.backend.cancel_task(
            task.id, task.fence, now))
        if ok:
            self._finished(TaskOutcome(task.id, "cancelled", None, None), task.step_name,
                           task.parent_id)

    async def _suspend(self, rt: RunningTask) -> None:
        task = rt.record
        ctx = rt.ctx
        awaiting: set[str] = set()
        if ctx is not None:
            # Step inserts interrupted by the cancellation may still commit; wait for them so
            # that every child this task waits on exists before the suspension is written.
            if ctx.inflight:
                done, _ = await asyncio.wait(set(ctx.inflight), timeout=30)
                if len(done) < len(ctx.inflight) or any(
                    f.cancelled() or f.exception() is not None for f in done
                ):
                    # An insert failed or is stuck: suspending could wait on a child that
                    # does not exist. Give the task back instead; it resumes by replay.
                    await self._release(rt)
                    return
            # Children still awaited, and those whose waits the cancellation cut short: the
            # backend checks them in the same write, so a child that finished meanwhile
            # makes the task pending instead of waiting (no lost wake-up).
            awaiting = set(ctx.awaiting) | ctx.interrupted
            # Inline children running here are not written yet: write them (born running,
            # still leased to this worker) while this task still holds its lease, so that
            # their completion can find and wake the suspended task.
            for child_id in sorted(awaiting):
                child = self.worker.running.get(child_id)
                if child is not None and not child.materialized:
                    try:
                        await self.materialize(child)
                    except Exception as exc:
                        log.warning("could not write step %s before suspending %s: %s",
                                    child_id, task.id, exc,
                                    extra=log_extra(task, self.worker.worker_id))
                        await self._release(rt)
                        return
        await self._write(rt, lambda now: self.executor.backend.suspend_task(
            task.id, task.fence, sorted(awaiting), now))
        self.worker.wake()

    async def _release(self, rt: RunningTask) -> None:
        task = rt.record
        if not rt.materialized:
            return  # nothing written: its caller replays and runs it again
        try:
            await asyncio.shield(self.executor.backend.release_task(
                task.id, task.fence, self.executor.clock.now()))
        except Exception as exc:  # the lease will expire and another worker takes over
            log.warning("could not release task %s: %s", task.id, exc,
                        extra=log_extra(task, self.worker.worker_id))

    def _finished(self, outcome: TaskOutcome, step: str, parent_id: str | None) -> None:
        if faults.plan is not None:
            faults.plan_hit_sync("after_step_recorded", task_id=outcome.task_id, step=step)
        self.executor.hub.resolve(outcome)
        if parent_id is None or parent_id not in self.worker.running:
            # Someone elsewhere may wait for it (an execution's caller, a parent on another
            # worker, a suspended parent now claimable). A parent running here has just been
            # handed the outcome: telling other processes would only cost a transaction.
            self.executor.publish("done", outcome.task_id)
        if parent_id is not None and parent_id not in self.worker.running:
            # The parent is not waiting here in memory: storage made it claimable.
            self.worker.wake()

    async def materialize(self, rt: RunningTask) -> None:
        """Write an inline step as born running, leased to this worker (fence 1), so that it
        can make durable calls of its own or outlive its caller's suspension.

        Raises:
            LeaseLostError: the caller no longer holds its lease (the step is abandoned).
        """
        async with rt.write_lock:
            if rt.materialized or rt.recorded:
                return
            assert rt.inline is not None and rt.inline_parent is not None
            ex = self.executor
            now = ex.clock.now()
            lease_until = now + self.worker.lease
            parent_id, parent_fence = rt.inline_parent
            delay = 0.05
            while True:
                try:
                    task, created = await ex.backend.create_step(
                        parent_id, parent_fence, rt.inline, now,
                        Lease(self.worker.worker_id, lease_until))
                    break
                except LeaseLostError:
                    raise
                except Exception as exc:
                    # storage trouble: retry while the caller's lease covers this step (the
                    # insert is idempotent on its step key)
                    until = rt.record.lease_expires_at
                    if until is None or ex.clock.now() >= until:
                        raise LeaseLostError(
                            f"could not write step {rt.inline.id} before its caller's lease "
                            f"ran out: {type(exc).__name__}") from None
                    self.worker.storage_trouble(exc)
                    await ex.clock.sleep(delay)
                    delay = min(5.0, delay * 2)
            # not created: the key is taken, by this very write if an earlier try committed
            # without our hearing of it (same id, leased to us), else by another run
            if not created and not (task.id == rt.inline.id
                                    and task.worker_id == self.worker.worker_id):
                raise LeaseLostError(f"step {rt.inline.id} was written by another run")
            rt.record = task
            if rt.ctx is not None:
                rt.ctx.task = task
            rt.materialized = True
            self.worker.lease_granted(lease_until)

    async def _write_inline(self, rt: RunningTask, **outcome: Any) -> bool:
        """Write an inline step with its outcome: one insert, fenced on its caller."""
        assert rt.inline is not None and rt.inline_parent is not None
        parent_id, parent_fence = rt.inline_parent
        new = replace(rt.inline, **outcome)
        async with rt.write_lock:
            if rt.materialized:
                return await self._write_materialized_outcome(rt, outcome)
            try:
                ok = await self._write(rt, lambda now: self._insert_finished(
                    parent_id, parent_fence, new, now))
            except LeaseLostError:
                ok = False
            rt.recorded = ok
            if not ok:
                # Not recorded (fenced out, or storage unreachable until the caller's lease
                # ran out): the caller must not wait for a step that will never exist. Give
                # it back so that it replays and runs the step again.
                caller = self.worker.running.get(parent_id)
                if caller is not None and caller.record.fence == parent_fence:
                    caller.stop("shutdown")
            return ok

    async def _insert_finished(
        self, parent_id: str, parent_fence: int, new: NewTask, now: datetime
    ) -> bool:
        try:
            _, created = await self.executor.backend.create_step(parent_id, parent_fence, new,
                                                                  now)
        except LeaseLostError:
            return False
        return created

    async def _write_materialized_outcome(self, rt: RunningTask, outcome: dict[str, Any]) -> bool:
        # The step was written while it ran (its caller was suspended): finish it the usual,
        # fenced way.
        task = rt.record
        backend = self.executor.backend
        state = outcome["state"]
        if state == "completed":
            return await self._write(rt, lambda now: backend.complete_task(
                task.id, task.fence, outcome["result"], now))
        if state == "pending":
            return await self._write(rt, lambda now: backend.retry_task(
                task.id, task.fence, outcome["error"], outcome["due_at"], now))
        return await self._write(rt, lambda now: backend.fail_task(
            task.id, task.fence, outcome["error"], now, outcome.get("dead_letter_reason")))

    async def _write(self, rt: RunningTask, op: Any) -> bool:
        """Run a fenced write, retrying through storage outages until the lease runs out."""
        task = rt.record
        ex = self.executor
        delay = 0.05
        while True:
            try:
                ok = bool(await asyncio.shield(op(ex.clock.now())))
            except Exception as exc:
                if ex.clock.now() >= (task.lease_expires_at or ex.clock.now()):
                    log.warning("giving up recording task %s after its lease ran out: %s",
                                task.id, exc, extra=log_extra(task, self.worker.worker_id))
                    return False
                self.worker.storage_trouble(exc)
                await ex.clock.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            if not ok:
                # one WARNING per lease loss: the heartbeat may have reported it already
                level = logging.INFO if rt.lease_loss_logged else logging.WARNING
                rt.lease_loss_logged = True
                log.log(level,
                        "stale lease: the write for task %s (fence %d) was rejected; another "
                        "worker holds it now", task.id, task.fence,
                        extra=log_extra(task, self.worker.worker_id))
            return ok

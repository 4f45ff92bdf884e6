"""``Worker``: the claim loop, slots, leases and heartbeats, suspension and drain."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import faults
from .clock import SystemClock, hint_due, poll_sleep
from .durations import parse_duration
from .errors import ExecutionTimeoutError
from .lifecycle import WorkerLifecycle
from .names import check_queue, check_tags
from .records import ClaimFilter, Lease, NewTask, TaskKind, TaskOutcome, TaskRecord
from .runner import RunningTask, TaskRunner, log_extra
from .serialization import encode_error
from .waiting import sleep_or_event

if TYPE_CHECKING:
    from .app import Stent
    from .context import TaskContext

log = logging.getLogger("stent.worker")

#: how often a worker looks for executions past their deadline
_EXPIRY_SWEEP_S = 1.0

#: how often workers re-measure their clock's offset from the database's
_CLOCK_CHECK_S = 60.0

#: a lease is lost strictly after its expiry time
_TICK = timedelta(microseconds=1)
#: rows deleted per cleanup transaction
CLEANUP_BATCH = 500


def _is_suspect(task: TaskRecord) -> bool:
    """Whether ``task`` was taken over after its worker died (and may be what killed it)."""
    return task.crash_count > 0 and task.kind == TaskKind.FUNCTION


class Worker:
    """One worker: claims tasks into free slots and runs them until drained or cancelled.

    A task holds a slot while its own code runs and gives it back while it awaits steps, so a
    workflow waiting on its children never blocks them from running.
    """

    def __init__(
        self,
        executor: Stent,
        *,
        worker_id: str | None = None,
        queues: Iterable[str | None] | None = None,
        tags: Iterable[str] | None = None,
        max_concurrency: int = 10,
        lease_duration: object = timedelta(minutes=5),
        heartbeat_interval: object = None,
        poll_interval: float = 1.0,
        poll_interval_max: float | None = None,
        poll_backoff_factor: float | None = None,
        lifecycle: WorkerLifecycle | None = None,
        suspend_after: float = 60.0,
        drain_grace_period: float = 30.0,
        cleanup_interval: object = 3600.0,
        retention_period: object = timedelta(days=7),
        slow_step_warning: object = timedelta(minutes=10),
    ) -> None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"invalid max_concurrency {max_concurrency!r}: expected an int >= 1")
        self.executor = executor
        self.worker_id = worker_id or f"{executor.worker_name_prefix}-{uuid.uuid4().hex[:12]}"
        self.queues: tuple[str | None, ...] | None = (
            None if queues is None else tuple(check_queue(q) for q in queues)
        )
        self.tags = check_tags(tags)
        self.max_concurrency = max_concurrency
        self.lease = parse_duration(lease_duration)
        if self.lease <= timedelta(0):
            raise ValueError(f"invalid lease_duration {lease_duration!r}: must be positive")
        self.heartbeat_s = (
            parse_duration(heartbeat_interval).total_seconds()
            if heartbeat_interval is not None else self.lease.total_seconds() / 3
        )
        for name, v in (("poll_interval", poll_interval), ("suspend_after", suspend_after),
                        ("drain_grace_period", drain_grace_period)):
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or v != v:
                raise ValueError(f"invalid {name} {v!r}: expected seconds >= 0")
        if self.heartbeat_s <= 0:
            raise ValueError(f"invalid heartbeat_interval {heartbeat_interval!r}: must be positive")
        self.poll_interval = max(float(poll_interval), 0.001)
        self.poll_interval_max = float(poll_interval_max or self.poll_interval)
        self.poll_backoff = float(poll_backoff_factor or 2.0)
        self.suspend_after = float(suspend_after)
        self.drain_grace = float(drain_grace_period)
        self.cleanup_interval = parse_duration(cleanup_interval).total_seconds()
        if self.cleanup_interval <= 0:
            raise ValueError(f"invalid cleanup_interval {cleanup_interval!r}: must be positive")
        self.retention = parse_duration(retention_period)
        self.slow_step_s = parse_duration(slow_step_warning).total_seconds()
        if self.slow_step_s <= 0:
            raise ValueError(f"invalid slow_step_warning {slow_step_warning!r}: must be positive")
        self.lifecycle = lifecycle or WorkerLifecycle()
        self.lifecycle.worker_id = self.worker_id
        self.runner = TaskRunner(self)
        self.running: dict[str, RunningTask] = {}
        self.active = 0
        self.reserved = 0
        self._wake = asyncio.Event()
        self._housekeeping_wake = asyncio.Event()
        self._last_expiry_sweep = -1e18
        # Whether claimable work may be waiting in storage. A freed slot only wakes the
        # claim loop when it is set: otherwise an empty claim (a write transaction) is wasted.
        self._backlog = True
        self._next_timer: datetime | None = None
        self._stopping = False
        self._crashed = False
        self._background: set[asyncio.Task[None]] = set()
        self._last_outage_log = 0.0
        self._last_claim_ok = True
        #: the suspect (a task taken over after its worker died) running alone right now,
        #: if any: nothing else is claimed meanwhile
        self._suspect: str | None = None
        #: suspects were given back because other work ran here: claim nothing more until
        #: this worker is idle, then take them one at a time
        self._quiesce = False

    # -- public -------------------------------------------------------------------------------
    def claim_filter(self) -> ClaimFilter:
        """What this worker may claim, from the functions registered right now."""
        return ClaimFilter(self.executor.registry.names(), self.queues, self.tags or None)

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._backlog = True
        self._wake.set()

    def _slot_freed(self) -> None:
        """A slot came free: claim again only if the last claim may have left work behind."""
        if self._backlog:
            self._wake.set()

    async def run(self) -> None:
        """Serve until drained or cancelled."""
        ex = self.executor
        lc = self.lifecycle
        lc.drain_event()
        ex.register_worker(self)
        await self._correct_clock()  # before the first claim: leases are judged by it
        clock_loop = asyncio.get_running_loop().create_task(self._clock_loop())
        housekeeping = asyncio.get_running_loop().create_task(self._housekeeping())
        cleanup = asyncio.get_running_loop().create_task(self._cleanup_loop())
        loop_watch = asyncio.get_running_loop().create_task(self._watch_event_loop())
        try:
            if not lc.draining:
                lc.state = "ready"
                ex.worker_ready()
            await self._claim_loop()
            if not self._crashed:
                await self._drain()
        finally:
            self._stopping = True
            housekeeping.cancel()
            cleanup.cancel()
            loop_watch.cancel()
            clock_loop.cancel()
            await self._stop_all("crash" if self._crashed else "shutdown")
            lc.state = "stopped"
            lc.active_tasks = 0
            ex.unregister_worker(self)
        if self._crashed:
            raise faults.WorkerCrash(f"worker {self.worker_id} crashed (injected)")

    # -- slots --------------------------------------------------------------------------------
    def _free_slots(self) -> int:
        if self._suspect is not None or self._quiesce:
            return 0  # a suspect runs alone: if it kills this worker, it dies alone
        return self.max_concurrency - self.active - self.reserved

    def reserve_local_slot(self, new: NewTask) -> Lease | None:
        """Reserve a slot to run a just-created step here, if one is free and it is ours to run.

        Returns:
            The lease to create the step with, or None to leave it to the claim loop.
        """
        if self._stopping or self.lifecycle.draining or self._free_slots() <= 0:
            return None
        if new.kind != TaskKind.FUNCTION or new.step_name not in self.executor.registry:
            return None
        if self.queues is not None and new.queue not in self.queues:
            return None
        if self.tags and new.tags and not set(new.tags) & set(self.tags):
            return None
        self.reserved += 1
        until = self.executor.clock.now() + self.lease
        hint_due(self.executor.clock, until + _TICK)
        return Lease(self.worker_id, until)

    def release_reserved_slot(self) -> None:
        """Give back a reservation that was not used."""
        self.reserved -= 1
        self._slot_freed()

    def _release_in_background(self, tasks: list[TaskRecord]) -> None:
        """Give leased tasks back without waiting (used where the caller was cancelled)."""
        if not tasks or self._crashed:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop left (interpreter shutdown): the leases lapse
            return
        self._spawn(self._give_back(list(tasks)))

    async def _give_back(self, tasks: list[TaskRecord]) -> None:
        """Release leased tasks not started here (pending again, held by nobody); the ones
        given back are removed from ``tasks`` as it goes."""
        while tasks:
            t = tasks[0]
            try:
                await self.executor.backend.release_task(t.id, t.fence,
                                                         self.executor.clock.now())
            except Exception as exc:  # the lease expires and another worker takes over
                log.warning("could not give back task %s: %s", t.id, exc,
                            extra=log_extra(t, self.worker_id))
            tasks.pop(0)

    def _release_claim_after_cancel(self, claim: asyncio.Future[list[TaskRecord]]) -> None:
        if not claim.cancelled() and claim.exception() is None:
            self._release_in_background(claim.result())

    def run_inline(self, parent: TaskContext, new: NewTask, lease: Lease) -> TaskRecord:
        """Run a just-made step here at once, before writing it (on a reserved slot).

        Nothing is written until it ends: then one insert records it with its outcome,
        fenced on its caller, whose lease covers it meanwhile. If this worker dies first,
        the caller's replay finds no step at that key and runs it again (at least once). It
        is written earlier, born running, when it makes durable calls of its own or when its
        caller is suspended.
        """
        self.reserved -= 1
        record = TaskRecord(
            id=new.id, execution_id=parent.task.execution_id, parent_id=new.parent_id,
            parent_attempt=new.parent_attempt, seq=new.seq, step_name=new.step_name,
            kind=new.kind, state="running", args=new.args, arg_digest=new.arg_digest,
            created_at=self.executor.clock.now(), due_at=new.due_at, queue=new.queue,
            tags=tuple(new.tags), priority=new.priority, worker_id=self.worker_id,
            lease_expires_at=lease.expires_at, fence=0, retry_policy=dict(new.retry_policy),
            timeout_s=new.timeout_s, max_concurrent=new.max_concurrent,
            idempotency_key=new.idempotency_key, started_at=self.executor.clock.now(),
            trace_context=new.trace_context,
        )
        rt = RunningTask(record, inline=new, inline_parent=(parent.task.id, parent.task.fence),
                         materialized=False)
        self._start(record, rt)
        return record

    def lease_granted(self, until: datetime) -> None:
        """A lease until ``until`` was taken: tell a test clock when it would expire."""
        hint_due(self.executor.clock, until + _TICK)

    def run_reserved(self, task: TaskRecord) -> None:
        """Run a step created with this worker's lease."""
        self.reserved -= 1
        self._start(task)

    def task_started_waiting(self, ctx: TaskContext) -> None:
        """A running task awaits steps: its slot is free for others."""
        rt = self.running.get(ctx.task.id)
        if rt is None or rt.ctx is not ctx or not rt.holds_slot:
            return
        rt.holds_slot = False
        rt.waiting_since = self.executor.clock.monotonic()
        self.active -= 1
        self._sync_lifecycle()
        if self._suspect == rt.record.id:
            # a suspect awaiting its steps runs no code of its own: once storage knows it is
            # no longer alone (a death from now on is not charged to it), others may run here
            self._spawn(self._end_alone(rt))
        self._maybe_idle()
        if self.lifecycle.draining:
            rt.stop("suspend")
        self._slot_freed()

    def task_stopped_waiting(self, ctx: TaskContext) -> bool:
        """The task's awaited steps are done: it runs again (taking a slot, possibly over the
        limit for a moment; it gives it back at its next wait or when it finishes).

        Returns:
            False if it must not run here now: a suspect runs alone (marked so in storage,
            see :meth:`_isolate_suspects`), and a death of this worker meanwhile is charged
            to it. Its caller then stops this run before any more of its code runs, and the
            task is given back (``give_back``): it resumes by replay.
        """
        rt = self.running.get(ctx.task.id)
        if rt is None or rt.ctx is not ctx or rt.holds_slot:
            return True
        if self._suspect is not None and self._suspect != rt.record.id:
            if rt.stop_reason is None:
                # Its caller raises CancelledError where the wait ended; the whole run is
                # cancelled too (also when that is this very asyncio task: then a pending
                # request, which the runner absorbs), so that no sibling branch (gather, a
                # task group) goes on and no time-out turns it into a TimeoutError.
                rt.stop_reason = "give_back"
                if rt.task is not None:
                    rt.task.cancel()
            return False
        rt.holds_slot = True
        rt.waiting_since = None
        self.active += 1
        return True

    def timer_scheduled(self, due_at: datetime) -> None:
        """A timer or retry is due at ``due_at``: wake the claim loop then."""
        hint_due(self.executor.clock, due_at)
        if self._next_timer is None or due_at < self._next_timer:
            self._next_timer = due_at
            self.wake()

    def _sync_lifecycle(self) -> None:
        self.lifecycle.active_tasks = len(self.running)

    def _start(self, task: TaskRecord, rt: RunningTask | None = None) -> None:
        old = self.running.get(task.id)
        if old is not None:
            # This worker re-claimed a task whose lease it had lost while still running it
            # (a stalled heartbeat). The old run's fence is stale: stop it, keep the new one.
            old.stop("lease_lost")
            if old.holds_slot:
                old.holds_slot = False
                self.active -= 1
        rt = rt or RunningTask(task)
        rt.started_mono = self.executor.clock.monotonic()
        self.running[task.id] = rt
        if len(self.running) == 1:
            self._housekeeping_wake.set()
        self.active += 1
        self._sync_lifecycle()
        rt.task = asyncio.get_running_loop().create_task(
            self._run_one(rt), name=f"stent-task-{task.id}"
        )

    async def _run_one(self, rt: RunningTask) -> None:
        try:
            await self.runner.run(rt)
        except asyncio.CancelledError:
            pass
        except faults.WorkerCrash:
            self.crash()
        except Exception:
            log.exception("internal error while running task %s", rt.record.id,
                          extra=log_extra(rt.record, self.worker_id))
        finally:
            if self.running.get(rt.record.id) is rt:
                del self.running[rt.record.id]
            if rt.holds_slot:
                self.active -= 1
            self._sync_lifecycle()
            if self._suspect == rt.record.id:
                self._suspect = None
                self.wake()
            self._maybe_idle()
            if rt.record.max_concurrent is not None and not self._crashed:
                # A capped function's instance ended: one of its pending instances may be
                # claimable now (here and elsewhere), though the last claim found none.
                self.wake()
                self.executor.publish("work", "")
            else:
                self._slot_freed()

    # -- the claim loop -------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        ex = self.executor
        interval = self.poll_interval
        while not self.lifecycle.draining and not self._stopping:
            self._wake.clear()
            await self._expire_executions()
            free = self._free_slots()
            if free > 0:
                now = ex.clock.now()
                if self._next_timer is not None and self._next_timer <= now:
                    self._next_timer = None
                try:
                    await faults.hit("before_claim")
                    claim = asyncio.ensure_future(ex.backend.claim(
                        self.worker_id, self.claim_filter(), free, now, now + self.lease
                    ))
                    try:
                        tasks = await asyncio.shield(claim)
                    except asyncio.CancelledError:
                        # serve() was cancelled while the claim was in flight: it may still
                        # commit, and its tasks must not wait out their leases.
                        claim.add_done_callback(self._release_claim_after_cancel)
                        raise
                except faults.WorkerCrash:
                    self.crash()
                    break
                except Exception as exc:
                    self.storage_trouble(exc)
                    await sleep_or_event(ex, min(5.0, max(interval, 0.5)), self._wake)
                    interval = min(5.0, interval * 2)
                    continue
                self._storage_ok()
                # Fewer than asked: nothing else was claimable at this instant.
                self._backlog = len(tasks) == free
                if tasks:
                    hint_due(ex.clock, now + self.lease + _TICK)
                if tasks and faults.plan is not None:
                    try:
                        # leases taken in storage, no task started: the worst moment to die
                        await faults.plan.hit("before_claim_commit",
                                              task_ids=[t.id for t in tasks])
                    except faults.WorkerCrash:
                        self.crash()
                        break
                for t in await self._isolate_suspects(tasks):
                    self._start(t)
                if tasks:
                    interval = self.poll_interval
                    if len(tasks) == free:
                        await asyncio.sleep(0)
                        continue
            timeout = interval
            is_poll = True
            if self._next_timer is not None:
                until = (self._next_timer - ex.clock.now()).total_seconds()
                if until <= timeout:
                    timeout, is_poll = max(0.0, until), False
            woke = await sleep_or_event(ex, timeout, self._wake, poll=is_poll)
            if not woke:
                interval = min(self.poll_interval_max, interval * self.poll_backoff)

    async def _isolate_suspects(self, tasks: list[TaskRecord]) -> list[TaskRecord]:
        """The claimed tasks to start.

        A task taken over after its worker died (a suspect) may be what killed it, so it
        runs alone: storage charges a suspect's death to it (``crash_count``, judged against
        ``max_crash_recoveries``) only while it is marked alone, so its count grows by its
        own deaths, never its neighbours'. An idle worker (no task running its own code)
        marks the first suspect it claims alone, starts it, gives back everything else
        claimed with it and claims nothing more until the suspect ends or awaits a step
        (then it is unmarked first: see :meth:`_end_alone`); a task waiting here whose steps
        finish meanwhile is given back rather than resumed (:meth:`task_stopped_waiting`). A
        busy worker gives suspects back and claims nothing more until it is idle. Given-back
        tasks are pending, held by nobody, so a death meanwhile is not charged to them.
        """
        suspects = [t for t in tasks if _is_suspect(t)]
        if not suspects:
            return tasks
        normal = [t for t in tasks if not _is_suspect(t)]
        keep: list[TaskRecord] = []
        give_back: list[TaskRecord] = []
        first: TaskRecord | None = None
        try:
            if self.active == 0 and not self.reserved and self._suspect is None:
                first = suspects.pop(0)
                give_back = suspects + normal
                # Storage must know it runs alone before any of its code runs (a death
                # before the mark commits is charged to nobody). Meanwhile nothing else
                # starts here, and a waiting task whose steps finish is given back.
                self._suspect = first.id
                if await self._mark_alone(first, True):
                    keep = [first]
                else:
                    self._suspect = None
                    give_back.append(first)
                    self.wake()
                first = None  # in keep or in give_back now
            else:
                self._quiesce = True
                give_back, keep = suspects, normal
            gave_back = bool(give_back)
            await self._give_back(give_back)
        except BaseException:
            # serve() was cancelled here: nothing claimed may wait out its lease (a lapsed
            # lease is charged as a death), and a suspect not started is not alone
            pending = give_back + keep + ([first] if first is not None else [])
            self._release_in_background(pending)
            if any(self._suspect == t.id for t in pending):
                self._suspect = None
            raise
        if gave_back:
            self.executor.publish("work", "")  # another worker may take them now
        return keep

    async def _mark_alone(self, task: TaskRecord, alone: bool) -> bool | None:
        """Tell storage whether ``task`` runs alone. True once written; False if the fence is
        stale (the run is over); None after a storage error (logged). A backend without
        ``mark_alone`` keeps no mark: True, and its charging rule is its own."""
        mark = getattr(self.executor.backend, "mark_alone", None)
        if mark is None:
            return True
        try:
            return bool(await mark(task.id, task.fence, alone))
        except Exception as exc:
            log.warning("could not mark task %s as %s: %s", task.id,
                        "running alone" if alone else "no longer alone", exc,
                        extra=log_extra(task, self.worker_id))
            return None

    async def _end_alone(self, rt: RunningTask) -> None:
        """The suspect ``rt`` awaits its steps: unmark it, then let other work run here.
        A storage error is retried with backoff; meanwhile the suspect keeps this worker to
        itself (it runs no code while it waits, so nothing is charged wrongly)."""
        delay = 0.05
        while self._suspect == rt.record.id and self.running.get(rt.record.id) is rt:
            if rt.stop_reason is not None or await self._mark_alone(rt.record, False) is not None:
                # unmarked, or its run is over (a stale fence: the claim that took it over
                # cleared the mark): others may run here now
                if self._suspect == rt.record.id:
                    self._suspect = None
                    self.wake()
                return
            await self.executor.clock.sleep(delay)
            delay = min(5.0, delay * 2)

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _maybe_idle(self) -> None:
        """Nothing holds a slot here any more: claim again if claims were held back."""
        if self._quiesce and self.active == 0 and not self.reserved:
            self._quiesce = False
            self.wake()

    # -- heartbeats and suspension ------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        ex = self.executor
        tick = min(self.heartbeat_s, max(self.suspend_after / 2, 0.01))
        last_beat = ex.clock.monotonic()
        while True:
            busy = bool(self.running)
            # With nothing to renew or suspend this is only a look-again (a poll), which a
            # test clock may wake late; the first task to start wakes it, so that heartbeats
            # then run on a real timer.
            woke = await sleep_or_event(ex, tick, self._housekeeping_wake, poll=not busy)
            if woke:
                self._housekeeping_wake.clear()
                if not busy:
                    last_beat = ex.clock.monotonic()
                continue
            mono = ex.clock.monotonic()
            if mono - last_beat >= self.heartbeat_s * 0.999 or tick == self.heartbeat_s:
                last_beat = mono
                await self._heartbeat()
                await self._report_gauges()
            self._warn_slow_steps(mono)
            for rt in list(self.running.values()):
                if rt.waiting_since is not None and mono - rt.waiting_since >= self.suspend_after:
                    log.info("suspending task %s after waiting %.0fs", rt.record.id,
                             mono - rt.waiting_since,
                             extra=log_extra(rt.record, self.worker_id))
                    rt.stop("suspend")

    def _warn_slow_steps(self, mono: float) -> None:
        """WARNING for each step running its own code longer than ``slow_step_warning``,
        again at every further interval."""
        for rt in self.running.values():
            if rt.started_mono is None or not rt.holds_slot:
                continue
            ran = mono - rt.started_mono
            if ran >= self.slow_step_s * (rt.slow_warnings + 1):
                rt.slow_warnings = int(ran // self.slow_step_s)
                log.warning("step %s (task %s) has been running for %.0fs "
                            "(slow_step_warning=%.0fs)", rt.record.step_name, rt.record.id,
                            ran, self.slow_step_s, extra=log_extra(rt.record, self.worker_id))

    async def _watch_event_loop(self) -> None:
        """Log when the event loop was blocked past a third of the lease (a step running
        blocking code): heartbeats cannot run meanwhile, so leases may lapse. Real time: the
        loop's own clock."""
        limit = self.lease.total_seconds() / 3
        interval = max(0.05, min(1.0, limit / 4))
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            lag, last = now - last - interval, now
            if lag > limit:
                names = sorted({rt.record.step_name for rt in self.running.values()
                                if rt.holds_slot})
                log.warning("the event loop was blocked for %.1fs, over a third of the %.0fs "
                            "lease (leases were not renewed meanwhile); steps running then: %s",
                            lag, limit * 3, ", ".join(names) or "none",
                            extra={"worker_id": self.worker_id})

    async def _expire_executions(self) -> None:
        """Time out executions past their ``max_duration`` (at most once a second)."""
        ex = self.executor
        mono = ex.clock.monotonic()
        if mono - self._last_expiry_sweep < _EXPIRY_SWEEP_S:
            return
        self._last_expiry_sweep = mono
        error = encode_error(ExecutionTimeoutError("the execution ran past its max_duration"))
        try:
            expired = await ex.backend.expire_executions(error, ex.clock.now())
        except Exception as exc:
            self.storage_trouble(exc)
            return
        if expired:
            log.info("timed out %d execution(s) past their max_duration", len(expired),
                     extra={"worker_id": self.worker_id})
            ex.stop_local_tasks(expired, "expired")
            for eid in expired:
                ex.hub.resolve(TaskOutcome(eid, "cancelled", None, error))
                ex.publish("cancel", eid)
                ex.publish("done", eid)

    async def _correct_clock(self) -> None:
        """Measure this machine's offset from the database's clock and correct the system
        clock by it (the midpoint of the round trip is taken as the moment of the reading)."""
        clock = self.executor.clock
        probe = getattr(self.executor.backend, "database_time", None)
        if not isinstance(clock, SystemClock) or probe is None:
            return  # a test clock is the truth; a local database shares this machine's clock
        try:
            before = clock.raw_time()
            db_time = await probe()
            after = clock.raw_time()
        except Exception as exc:
            self.storage_trouble(exc)
            return
        offset = db_time.timestamp() - (before + after) / 2
        if abs(offset) >= 1.0 and abs(offset - clock.offset_s) >= 1.0:
            log.warning("this machine's clock is %.1f s %s the database's; correcting by it",
                        abs(offset), "behind" if offset > 0 else "ahead of",
                        extra={"worker_id": self.worker_id})
        clock.offset_s = offset

    async def _clock_loop(self) -> None:
        while True:
            await poll_sleep(self.executor.clock, _CLOCK_CHECK_S)
            await self._correct_clock()

    async def _report_gauges(self) -> None:
        """Worker and queue-depth gauges for a recorder that wants them."""
        ex = self.executor
        if ex.metrics is None:
            return
        ex.metric("worker_state", worker=self.lifecycle.name, active_tasks=len(self.running),
                  ready=self.lifecycle.ready)
        if callable(getattr(ex.metrics, "queue_depth", None)):
            for queue in self.queues or (None,):
                try:
                    depth = await ex.backend.queue_depth(queue)
                except Exception as exc:
                    self.storage_trouble(exc)
                    return
                ex.metric("queue_depth", queue=queue, depth=depth)

    async def _cleanup_loop(self) -> None:
        """Retention, every ``cleanup_interval``: delete finished executions (with their rows)
        and dead letters older than ``retention_period``, and expired cache entries. One
        worker at a time does it (the ``cleanup`` maintenance lease), in batches of
        ``CLEANUP_BATCH`` rows (one short transaction each)."""
        ex = self.executor
        while True:
            await poll_sleep(ex.clock, self.cleanup_interval)
            try:
                await self.run_cleanup()
            except Exception as exc:
                self.storage_trouble(exc)

    async def run_cleanup(self) -> tuple[int, int, int] | None:
        """One cleanup pass if this worker gets the maintenance lease: the numbers of
        executions, dead letters and cache entries deleted; None if another worker holds
        the lease."""
        ex = self.executor
        now = ex.clock.now()
        # long enough for a pass; renewed between batches
        hold = timedelta(seconds=max(60.0, self.cleanup_interval / 2))
        if not await ex.backend.acquire_maintenance("cleanup", self.worker_id, now + hold, now):
            return None
        cutoff = now - self.retention
        totals = [0, 0, 0]
        steps: list[Callable[[], Awaitable[int]]] = [
            lambda: ex.backend.cleanup_executions(cutoff, limit=CLEANUP_BATCH),
            lambda: ex.backend.cleanup_dead_letters(cutoff, limit=CLEANUP_BATCH),
            lambda: ex.backend.cleanup_cache(ex.clock.now(), limit=CLEANUP_BATCH),
        ]
        for i, step in enumerate(steps):
            while True:
                n = await step()
                totals[i] += n
                if n < CLEANUP_BATCH:
                    break
                now = ex.clock.now()
                if not await ex.backend.acquire_maintenance("cleanup", self.worker_id,
                                                            now + hold, now):
                    return (totals[0], totals[1], totals[2])  # taken over: stop here
                await asyncio.sleep(0)
        if any(totals):
            log.info("cleanup removed %d executions, %d dead letters and %d expired cache "
                     "entries (cutoff %s)", totals[0], totals[1], totals[2], cutoff.isoformat(),
                     extra={"worker_id": self.worker_id})
        return (totals[0], totals[1], totals[2])

    async def _heartbeat(self) -> None:
        ex = self.executor
        # inline steps not yet written ride on their callers' leases
        held = [(tid, rt.record.fence) for tid, rt in self.running.items() if rt.materialized]
        if not held:
            return
        try:
            await faults.hit("during_heartbeat")
        except faults.WorkerCrash:
            self.crash()
            return
        until = ex.clock.now() + self.lease
        try:
            lost = await ex.backend.renew_leases(self.worker_id, held, until)
        except Exception as exc:
            self.storage_trouble(exc)
            return
        self._storage_ok()
        held_fences = dict(held)
        for child in self.running.values():
            # inline steps not yet written ride on their callers' leases: their recording
            # deadline moves with them
            if (not child.materialized and child.inline_parent is not None
                    and child.inline_parent[0] in held_fences
                    and child.inline_parent[0] not in lost):
                child.record.lease_expires_at = until
        for tid, rt in list(self.running.items()):
            if held_fences.get(tid) != rt.record.fence:
                continue  # started (or re-claimed) after this heartbeat was sent
            ok = tid not in lost
            ex.metric("lease_renewed", task_id=tid, success=ok)
            if ok:
                rt.record.lease_expires_at = until
                hint_due(ex.clock, until + _TICK)
            else:
                log.log(logging.INFO if rt.lease_loss_logged else logging.WARNING,
                        "task %s lost its lease (fence %d); cancelling it here", tid,
                        rt.record.fence, extra=log_extra(rt.record, self.worker_id))
                rt.lease_loss_logged = True
                self._stop_with_inline_steps(rt, "lease_lost")

    # -- outages ----------------------------------------------------------------------------------
    def storage_trouble(self, exc: BaseException) -> None:
        """Log a storage failure at most once per 30 s; the caller retries with backoff."""
        now = time.monotonic()
        # 0.0: nothing logged yet (the monotonic clock may be under 30 s just after boot)
        if self._last_outage_log == 0.0 or now - self._last_outage_log >= 30.0:
            self._last_outage_log = now
            log.warning("storage unavailable, retrying: %s", exc,
                        extra={"worker_id": self.worker_id})
        else:
            log.debug("storage unavailable, retrying: %s", exc, extra={"worker_id": self.worker_id})
        self._last_claim_ok = False

    def _storage_ok(self) -> None:
        if not self._last_claim_ok:
            log.info("storage reachable again", extra={"worker_id": self.worker_id})
            self._last_claim_ok = True

    def _stop_with_inline_steps(self, rt: RunningTask, reason: str) -> None:
        """Stop a task and the inline steps running on its lease (not written yet, they
        cannot outlive it: their writes would be fenced out anyway)."""
        rt.stop(reason)
        for child in list(self.running.values()):
            if (not child.materialized and child.inline_parent is not None
                    and child.inline_parent[0] == rt.record.id):
                self._stop_with_inline_steps(child, reason)

    def crash(self) -> None:
        """Die abruptly (crash injection): drop every coroutine, write nothing, keep the
        leases held in storage, stop claiming. The tasks are taken over after their leases."""
        if self._crashed:
            return
        self._crashed = True
        self._stopping = True
        for rt in list(self.running.values()):
            rt.stop("crash")
        self.wake()
        log.warning("worker %s crashed (injected)", self.worker_id,
                    extra={"worker_id": self.worker_id})

    # -- drain and stop -----------------------------------------------------------------------------
    async def _drain(self) -> None:
        lc = self.lifecycle
        lc.state = "draining"
        log.info("worker %s draining: %d tasks held", self.worker_id, len(self.running),
                 extra={"worker_id": self.worker_id})
        for rt in list(self.running.values()):
            if not rt.holds_slot:
                rt.stop("suspend")
        deadline = self.executor.clock.monotonic() + self.drain_grace
        while self.running and self.executor.clock.monotonic() < deadline:
            self._wake.clear()
            await sleep_or_event(self.executor, min(0.05, self.drain_grace), self._wake)

    async def _stop_all(self, reason: str) -> None:
        tasks = []
        for rt in list(self.running.values()):
            rt.stop(reason)
            if rt.task is not None:
                tasks.append(rt.task)
        if tasks:
            await asyncio.wait(tasks, timeout=10.0)

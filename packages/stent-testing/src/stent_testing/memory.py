"""``InMemoryBackend``: the reference implementation of the backend contract, in memory.

Every operation runs without an ``await`` between its reads and writes, so on one event loop
each is atomic, just as each SQL operation is one transaction. It passes the same conformance
suite as the SQL backends, which keeps it an honest stand-in in tests.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from stent.clock import to_utc
from stent.errors import LeaseLostError
from stent.records import (
    LIVE_EXECUTION_STATES,
    TERMINAL_EXECUTION_STATES,
    TERMINAL_TASK_STATES,
    CacheClaim,
    ClaimFilter,
    DeadLetterRecord,
    ExecutionEffect,
    ExecutionRecord,
    Lease,
    NewExecution,
    NewTask,
    StepRecord,
    TaskOutcome,
    TaskRecord,
)

PROGRESS_LIMIT = 100


def _progress(ex: ExecutionRecord, event: str, now: datetime, **detail: object) -> None:
    entry: dict[str, object] = {"event": event, "at": now.isoformat()}
    entry.update(detail)
    ex.progress.append(json.loads(json.dumps(entry)))
    del ex.progress[:-PROGRESS_LIMIT]


@dataclass(slots=True)
class _CacheEntry:
    """One idempotency/cache key: its owner and, once the owner completed, its result."""

    owner_task_id: str
    arg_digest: str
    ttl_s: float | None
    result: bytes | None = None
    stored: bool = False
    expires_at: datetime | None = None

    def live(self, now: datetime) -> bool:
        return self.stored and (self.expires_at is None or self.expires_at > now)


class InMemoryBackend:
    """A backend that keeps everything in this process (lost when it exits)."""

    def __init__(self) -> None:
        self._executions: dict[str, ExecutionRecord] = {}
        self._tasks: dict[str, TaskRecord] = {}
        #: running tasks whose current run is marked alone on its worker (mark_alone)
        self._alone: set[str] = set()
        self._by_key: dict[tuple[str, int, int], str] = {}
        self._children: dict[str, list[str]] = {}
        self._idem: dict[str, str] = {}
        self._dead: dict[str, DeadLetterRecord] = {}
        self._order = 0
        self._created_order: dict[str, int] = {}
        #: unconsumed signals: execution -> name -> payloads, oldest first
        self._signals: dict[str, dict[str, deque[bytes]]] = {}
        #: signal waiters: execution -> name -> task ids in creation order
        self._waiters: dict[str, dict[str, list[str]]] = {}
        self._cache: dict[str, _CacheEntry] = {}
        #: task id -> cache keys it owns without a stored result yet
        self._cache_owned: dict[str, set[str]] = {}
        self._maintenance: dict[str, tuple[str, datetime]] = {}
        #: task id -> the state it was in when its execution's finish cancelled it (a
        #: dead-letter replay that revives the execution puts it back)
        self._cancelled_from: dict[str, str] = {}
        self.closed = False

    async def init_db(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True

    # -- helpers ----------------------------------------------------------------------------
    def _new_task_record(self, execution_id: str, new: NewTask, now: datetime) -> TaskRecord:
        finished = new.state in TERMINAL_TASK_STATES
        rec = TaskRecord(
            id=new.id, execution_id=execution_id, parent_id=new.parent_id,
            parent_attempt=new.parent_attempt, seq=new.seq, step_name=new.step_name,
            kind=new.kind, state=new.state, args=new.args, arg_digest=new.arg_digest,
            created_at=to_utc(now), due_at=to_utc(new.due_at), result=new.result, queue=new.queue,
            tags=tuple(new.tags), priority=new.priority, retry_policy=dict(new.retry_policy),
            timeout_s=new.timeout_s, max_concurrent=new.max_concurrent,
            idempotency_key=new.idempotency_key, finished_at=now if finished else None,
            error=new.error, attempt=new.attempt, retries=new.retries,
            trace_context=new.trace_context,
        )
        self._order += 1
        self._created_order[rec.id] = self._order
        return rec

    def _held(self, task_id: str, fence: int) -> TaskRecord | None:
        t = self._tasks.get(task_id)
        if t is None or t.fence != fence or t.state != "running":
            return None
        return t

    def _wake_parent(self, t: TaskRecord) -> None:
        if t.parent_id is not None:
            p = self._tasks.get(t.parent_id)
            if p is not None and p.state == "waiting":
                p.state = "pending"

    def _finish_execution(
        self, t: TaskRecord, state: str, now: datetime, result: bytes | None, error: bytes | None
    ) -> None:
        now = to_utc(now)
        if t.parent_id is not None:
            self._settle(t.execution_id, now)
            return
        ex = self._executions.get(t.execution_id)
        if ex is None or ex.state not in LIVE_EXECUTION_STATES:
            # cancelling, cancelled or timed out: no later write may complete or fail it
            self._settle(t.execution_id, now)
            return
        ex.state = state
        ex.result = result
        ex.error = error
        ex.finished_at = now
        _progress(ex, state, now)
        self._stop_unfinished(t, now)

    def _stop_unfinished(self, root: TaskRecord, now: datetime) -> None:
        """A finished execution leaves no task unfinished: every pending, waiting or running
        task under ``root`` is cancelled (a running one's worker is fenced out: its later
        writes find it cancelled), remembering the state it was in."""
        stack = list(self._children.get(root.id, ()))
        while stack:
            c = self._tasks.get(stack.pop())
            if c is None:
                continue
            stack.extend(self._children.get(c.id, ()))
            if c.state in ("pending", "waiting", "running"):
                self._cancelled_from[c.id] = c.state
                c.state = "cancelled"
                c.finished_at = now
                c.worker_id = None
                c.lease_expires_at = None

    # -- cancellation and deadlines -----------------------------------------------------------
    def _tasks_of(self, execution_id: str) -> list[TaskRecord]:
        return [t for t in self._tasks.values() if t.execution_id == execution_id]

    def _stopping(self, execution_id: str) -> bool:
        ex = self._executions.get(execution_id)
        return ex is not None and ex.state not in LIVE_EXECUTION_STATES

    def _cancel(self, t: TaskRecord, now: datetime) -> None:
        t.state = "cancelled"
        t.finished_at = now
        t.worker_id = None
        t.lease_expires_at = None
        self._wake_parent(t)

    def _settle(self, execution_id: str, now: datetime) -> None:
        """A cancelling execution is cancelled once none of its tasks runs any more."""
        ex = self._executions.get(execution_id)
        if ex is None or ex.state != "cancelling":
            return
        if any(t.state == "running" for t in self._tasks_of(execution_id)):
            return
        ex.state = "cancelled"
        ex.finished_at = now
        _progress(ex, "cancelled", now)

    async def cancel_execution(self, execution_id: str, error: bytes, now: datetime) -> str | None:
        now = to_utc(now)
        ex = self._executions.get(execution_id)
        if ex is None:
            return None
        if ex.state not in LIVE_EXECUTION_STATES:
            return ex.state
        ex.error = error
        for t in self._tasks_of(execution_id):
            if t.state in ("pending", "waiting"):
                self._cancel(t, now)
        ex.state = "cancelling"
        _progress(ex, "cancelling", now)
        self._settle(execution_id, now)
        return ex.state

    async def cancel_task(self, task_id: str, fence: int, now: datetime) -> bool:
        now = to_utc(now)
        t = self._held(task_id, fence)
        if t is None:
            return False
        self._cancel(t, now)
        self._settle(t.execution_id, now)
        return True

    async def expire_executions(self, error: bytes, now: datetime, limit: int = 100) -> list[str]:
        now = to_utc(now)
        expired: list[str] = []
        for ex in list(self._executions.values()):
            if len(expired) >= limit:
                break
            if ex.state in LIVE_EXECUTION_STATES and ex.deadline is not None and ex.deadline < now:
                ex.state = "timed_out"
                ex.error = error
                ex.finished_at = now
                _progress(ex, "timed_out", now)
                for t in self._tasks_of(ex.id):
                    if t.state in ("pending", "waiting", "running"):
                        self._cancel(t, now)
                expired.append(ex.id)
        # tasks of cancelling executions whose workers died: nobody else will stop them
        for t in list(self._tasks.values()):
            if (t.state == "running" and t.lease_expires_at is not None
                    and t.lease_expires_at < now and self._stopping(t.execution_id)):
                self._cancel(t, now)
                self._settle(t.execution_id, now)
        return expired

    # -- engine operations --------------------------------------------------------------------
    async def create_execution(self, new: NewExecution, now: datetime) -> tuple[str, bool]:
        now = to_utc(now)
        if new.id in self._executions:
            return new.id, False
        if new.idempotency_key is not None and new.idempotency_key in self._idem:
            return self._idem[new.idempotency_key], False
        ex = ExecutionRecord(
            id=new.id, function=new.function, state="pending", root_task_id=new.root.id,
            created_at=to_utc(now), args=new.args, queue=new.queue, tags=tuple(new.tags),
            priority=new.priority, idempotency_key=new.idempotency_key,
            deadline=to_utc(new.deadline) if new.deadline else None,
        )
        _progress(ex, "dispatched", now)
        self._executions[ex.id] = ex
        if new.idempotency_key is not None:
            self._idem[new.idempotency_key] = ex.id
        self._tasks[new.root.id] = self._new_task_record(ex.id, new.root, now)
        return ex.id, True

    async def claim(
        self, worker_id: str, claim_filter: ClaimFilter, limit: int, now: datetime,
        lease_until: datetime,
    ) -> list[TaskRecord]:
        now = to_utc(now)
        lease_until = to_utc(lease_until)
        if limit <= 0:
            return []
        candidates = [
            t for t in self._tasks.values()
            if (
                (t.state == "pending" and t.due_at <= now)
                or (t.state == "running" and t.lease_expires_at is not None
                    and t.lease_expires_at < now)
            )
            and claim_filter.matches(t)
            and not self._stopping(t.execution_id)
        ]
        candidates.sort(key=lambda t: (-t.priority, t.due_at, self._created_order[t.id]))
        # max_concurrent: running instances per capped function, counted inside this same
        # atomic step so that two claimers can never both take the last slot.
        capped = {t.step_name for t in candidates if t.max_concurrent is not None}
        running: dict[str, int] = dict.fromkeys(capped, 0)
        if capped:
            for t in self._tasks.values():
                if (t.step_name in capped and t.state == "running"
                        and t.lease_expires_at is not None and t.lease_expires_at >= now):
                    running[t.step_name] += 1
        out: list[TaskRecord] = []
        for t in candidates:
            if len(out) >= limit:
                break
            if t.max_concurrent is not None:
                if running[t.step_name] >= t.max_concurrent:
                    continue
                running[t.step_name] += 1
            if (t.state == "running" and (t.crash_count == 0 or t.id in self._alone)
                    and not self._awaits_a_step(t)):
                t.crash_count += 1
            self._alone.discard(t.id)
            t.state = "running"
            t.fence += 1
            t.worker_id = worker_id
            t.lease_expires_at = lease_until
            if t.started_at is None:
                t.started_at = now
            if t.parent_id is None:
                ex = self._executions.get(t.execution_id)
                if ex is not None and ex.state == "pending":
                    ex.state = "running"
                    ex.started_at = now
                    _progress(ex, "running", now)
            out.append(t.copy())
        return out

    def _awaits_a_step(self, t: TaskRecord) -> bool:
        """Whether ``t`` has an unfinished step at its current attempt: then it was only
        awaiting it when its worker died, and its recovery is not charged to it."""
        for cid in self._children.get(t.id, ()):
            c = self._tasks.get(cid)
            if (c is not None and c.parent_attempt == t.attempt
                    and c.state not in TERMINAL_TASK_STATES):
                return True
        return False

    def _held_parent(self, parent_id: str, parent_fence: int) -> TaskRecord:
        parent = self._held(parent_id, parent_fence)
        if parent is None:
            raise LeaseLostError(f"task {parent_id} is no longer held at fence {parent_fence}")
        if self._stopping(parent.execution_id):
            raise LeaseLostError(f"execution {parent.execution_id} is stopping: no new steps")
        return parent

    def _insert_step(
        self, parent: TaskRecord, new: NewTask, now: datetime, lease: Lease | None = None
    ) -> tuple[TaskRecord, bool]:
        """Insert-if-absent at the step key; the caller checked the parent's fence."""
        key = (parent.id, new.parent_attempt, new.seq)
        existing = self._by_key.get(key)
        if existing is not None:
            return self._tasks[existing], False
        rec = self._new_task_record(parent.execution_id, new, now)
        if lease is not None and rec.state == "pending":
            rec.state = "running"
            rec.fence = 1
            rec.worker_id = lease.worker_id
            rec.lease_expires_at = to_utc(lease.expires_at)
            rec.started_at = now
        if rec.state in TERMINAL_TASK_STATES:
            rec.started_at = now
        self._tasks[rec.id] = rec
        self._by_key[key] = rec.id
        self._children.setdefault(parent.id, []).append(rec.id)
        if rec.state == "failed" and new.dead_letter_reason is not None:
            self._dead[rec.id] = DeadLetterRecord(
                task_id=rec.id, execution_id=rec.execution_id, step_name=rec.step_name,
                queue=rec.queue, reason=new.dead_letter_reason, error=rec.error,
                created_at=now, retries=rec.retries,
            )
        if rec.state == "pending" and rec.retries > 0:
            ex = self._executions.get(rec.execution_id)
            if ex is not None:
                _progress(ex, "retrying", now, task_id=rec.id, step=rec.step_name,
                          attempt=rec.attempt)
        return rec, True

    async def create_step(
        self, parent_id: str, parent_fence: int, new: NewTask, now: datetime,
        lease: Lease | None = None,
    ) -> tuple[TaskRecord, bool]:
        now = to_utc(now)
        parent = self._held_parent(parent_id, parent_fence)
        rec, created = self._insert_step(parent, new, now, lease)
        return rec.copy(), created

    async def create_steps(
        self, parent_id: str, parent_fence: int, news: Sequence[NewTask], now: datetime
    ) -> list[tuple[TaskRecord, bool]]:
        now = to_utc(now)
        parent = self._held_parent(parent_id, parent_fence)
        out = []
        for new in news:
            rec, created = self._insert_step(parent, new, now)
            out.append((rec.copy(), created))
        return out

    # -- signals ----------------------------------------------------------------------------
    async def create_signal_wait(
        self, parent_id: str, parent_fence: int, new: NewTask, signal_name: str, now: datetime
    ) -> tuple[TaskRecord, bool]:
        now = to_utc(now)
        parent = self._held_parent(parent_id, parent_fence)
        existing = self._by_key.get((parent.id, new.parent_attempt, new.seq))
        if existing is not None:
            return self._tasks[existing].copy(), False
        buffered = self._signals.get(parent.execution_id, {}).get(signal_name)
        if buffered:
            # the oldest unconsumed signal: the waiter is born completed with it
            born = replace(new, state="completed", result=buffered.popleft(), error=None)
            rec, _ = self._insert_step(parent, born, now)
            return rec.copy(), True
        rec, _ = self._insert_step(parent, new, now)
        if rec.state in ("pending", "waiting"):
            self._waiters.setdefault(parent.execution_id, {}).setdefault(
                signal_name, []).append(rec.id)
        return rec.copy(), True

    async def send_signal(
        self, execution_id: str, name: str, payload: bytes, now: datetime
    ) -> str | None:
        now = to_utc(now)
        if execution_id not in self._executions:
            return None
        waiters = self._waiters.get(execution_id, {}).get(name, [])
        # finished waiters never wait again: drop them; claimed ones may be released, and
        # those cancelled by their execution's finish may be revived by a replay, so stay
        waiters[:] = [
            w for w in waiters
            if (t := self._tasks.get(w)) is not None
            and (t.state not in TERMINAL_TASK_STATES
                 or (t.state == "cancelled" and w in self._cancelled_from))
        ]
        for waiter_id in waiters:
            t = self._tasks[waiter_id]
            parent = self._tasks.get(t.parent_id) if t.parent_id is not None else None
            if parent is None or parent.attempt != t.parent_attempt \
                    or parent.state in TERMINAL_TASK_STATES:
                continue  # left behind by an attempt that failed: nobody reads it any more
            if t.state in ("pending", "waiting"):
                waiters.remove(waiter_id)
                if t.started_at is None:
                    t.started_at = now
                self._complete(t, payload, now)
                return t.id
        self._signals.setdefault(execution_id, {}).setdefault(name, deque()).append(payload)
        return ""

    # -- effects, cache and maintenance leases -------------------------------------------------
    async def record_effect(
        self, parent_id: str, parent_fence: int, new: NewTask, effect: ExecutionEffect,
        now: datetime,
    ) -> tuple[TaskRecord, bool]:
        now = to_utc(now)
        if effect.kind == "increment":
            value: object = effect.delta
        elif effect.kind == "set_state":
            value = json.loads(effect.value_json)  # invalid JSON: raises, nothing written
        else:
            raise ValueError(f"unknown execution effect {effect.kind!r}")
        parent = self._held_parent(parent_id, parent_fence)
        rec, created = self._insert_step(parent, new, now)
        ex = self._executions.get(parent.execution_id)
        if created and ex is not None:
            if effect.kind == "increment":
                ex.counters[effect.name] = ex.counters.get(effect.name, 0) + effect.delta
            else:
                ex.custom_state[effect.name] = value
        return rec.copy(), created

    async def cache_claim(
        self, key: str, task_id: str, arg_digest: str, ttl_s: float | None, now: datetime
    ) -> CacheClaim:
        now = to_utc(now)
        entry = self._cache.get(key)
        if entry is not None and entry.live(now):
            if entry.arg_digest != arg_digest:
                return CacheClaim("conflict", owner_task_id=entry.owner_task_id,
                                  arg_digest=entry.arg_digest)
            t = self._tasks.get(task_id)
            ex = self._executions.get(t.execution_id) if t is not None else None
            if ex is not None:
                _progress(ex, "cache_hit", now, task_id=task_id, key=key)
            return CacheClaim("hit", result=entry.result, owner_task_id=entry.owner_task_id,
                              arg_digest=entry.arg_digest)
        if entry is not None and not entry.stored and entry.owner_task_id != task_id:
            owner = self._tasks.get(entry.owner_task_id)
            if owner is not None and owner.state not in TERMINAL_TASK_STATES:
                return CacheClaim("busy", owner_task_id=entry.owner_task_id,
                                  arg_digest=entry.arg_digest)
        if entry is not None:
            self._disown(entry.owner_task_id, key)
        self._cache[key] = _CacheEntry(owner_task_id=task_id, arg_digest=arg_digest, ttl_s=ttl_s)
        self._cache_owned.setdefault(task_id, set()).add(key)
        return CacheClaim("owner", owner_task_id=task_id, arg_digest=arg_digest)

    def _disown(self, task_id: str, key: str) -> None:
        owned = self._cache_owned.get(task_id)
        if owned is not None:
            owned.discard(key)
            if not owned:
                del self._cache_owned[task_id]

    def _store_cached_result(self, task_id: str, result: bytes, now: datetime) -> None:
        for key in self._cache_owned.pop(task_id, set()):
            entry = self._cache.get(key)
            if entry is None or entry.owner_task_id != task_id:
                continue
            entry.result = result
            entry.stored = True
            entry.expires_at = (
                None if entry.ttl_s is None else now + timedelta(seconds=entry.ttl_s)
            )

    async def cleanup_cache(self, now: datetime, limit: int = 1000) -> int:
        now = to_utc(now)
        expired = sorted(
            ((e.expires_at, k) for k, e in self._cache.items()
             if e.stored and e.expires_at is not None and e.expires_at < now),
        )
        for _, key in expired[:max(limit, 0)]:
            del self._cache[key]
        return min(len(expired), max(limit, 0))

    async def acquire_maintenance(
        self, name: str, holder: str, until: datetime, now: datetime
    ) -> bool:
        now = to_utc(now)
        current = self._maintenance.get(name)
        if current is not None and current[0] != holder and current[1] >= now:
            return False
        self._maintenance[name] = (holder, to_utc(until))
        return True

    async def load_steps(self, parent_id: str, attempt: int) -> list[StepRecord]:
        out = []
        for cid in self._children.get(parent_id, []):
            c = self._tasks.get(cid)
            if c is not None and c.parent_attempt == attempt:
                out.append(StepRecord(c.id, c.seq, c.step_name, c.kind, c.arg_digest, c.state,
                                      c.result, c.error, c.due_at))
        out.sort(key=lambda s: s.seq)
        return out

    async def complete_task(self, task_id: str, fence: int, result: bytes, now: datetime) -> bool:
        now = to_utc(now)
        t = self._held(task_id, fence)
        if t is None:
            return False
        self._complete(t, result, now)
        return True

    def _complete(self, t: TaskRecord, result: bytes, now: datetime) -> None:
        """Complete ``t`` (held by its worker, or a signal waiter being served)."""
        t.state = "completed"
        t.result = result
        t.error = None
        t.finished_at = now
        t.worker_id = None
        t.lease_expires_at = None
        self._store_cached_result(t.id, result, now)
        self._wake_parent(t)
        self._finish_execution(t, "completed", now, result, None)

    async def fail_task(
        self, task_id: str, fence: int, error: bytes, now: datetime,
        dead_letter_reason: str | None,
    ) -> bool:
        now = to_utc(now)
        t = self._held(task_id, fence)
        if t is None:
            return False
        t.state = "failed"
        t.error = error
        t.finished_at = now
        t.worker_id = None
        t.lease_expires_at = None
        if dead_letter_reason is not None:
            self._dead[t.id] = DeadLetterRecord(
                task_id=t.id, execution_id=t.execution_id, step_name=t.step_name,
                queue=t.queue, reason=dead_letter_reason, error=error, created_at=now,
                retries=t.retries,
            )
        self._wake_parent(t)
        self._finish_execution(t, "failed", now, None, error)
        return True

    async def retry_task(
        self, task_id: str, fence: int, error: bytes, due_at: datetime, now: datetime
    ) -> bool:
        now = to_utc(now)
        due_at = to_utc(due_at)
        t = self._held(task_id, fence)
        if t is None:
            return False
        if self._stopping(t.execution_id):
            self._cancel(t, now)  # the execution is cancelling or over: no next attempt
            self._settle(t.execution_id, now)
            return True
        t.state = "pending"
        t.error = error
        t.due_at = due_at
        t.attempt += 1
        t.retries += 1
        t.worker_id = None
        t.lease_expires_at = None
        ex = self._executions.get(t.execution_id)
        if ex is not None:
            _progress(ex, "retrying", now, task_id=t.id, step=t.step_name, attempt=t.attempt)
        return True

    async def mark_alone(self, task_id: str, fence: int, alone: bool) -> bool:
        t = self._held(task_id, fence)
        if t is None:
            return False
        if alone:
            self._alone.add(task_id)
        else:
            self._alone.discard(task_id)
        return True

    async def release_task(self, task_id: str, fence: int, now: datetime) -> bool:
        now = to_utc(now)
        t = self._held(task_id, fence)
        if t is None:
            return False
        if self._stopping(t.execution_id):
            self._cancel(t, now)  # the execution is cancelling or over: no next attempt
            self._settle(t.execution_id, now)
            return True
        t.state = "pending"
        t.worker_id = None
        t.lease_expires_at = None
        return True

    async def suspend_task(
        self, task_id: str, fence: int, awaited: Sequence[str], now: datetime
    ) -> bool:
        now = to_utc(now)
        t = self._held(task_id, fence)
        if t is None:
            return False
        if self._stopping(t.execution_id):
            self._cancel(t, now)  # the execution is cancelling or over: no next attempt
            self._settle(t.execution_id, now)
            return True
        # A child may have finished between the worker deciding to suspend and this write;
        # checking here, in the same atomic step, is what makes the wake-up impossible to lose.
        done = any(
            (c := self._tasks.get(a)) is not None and c.state in TERMINAL_TASK_STATES
            for a in awaited
        )
        t.state = "pending" if done else "waiting"
        t.worker_id = None
        t.lease_expires_at = None
        ex = self._executions.get(t.execution_id)
        if ex is not None and not done:
            _progress(ex, "waiting", now, task_id=t.id, step=t.step_name)
        return True

    async def renew_leases(
        self, worker_id: str, held: Sequence[tuple[str, int]], lease_until: datetime
    ) -> set[str]:
        lease_until = to_utc(lease_until)
        lost: set[str] = set()
        for task_id, fence in held:
            t = self._held(task_id, fence)
            if t is None or t.worker_id != worker_id:
                lost.add(task_id)
            elif self._stopping(t.execution_id):
                # cancelled or timed out: the heartbeat is how a remote worker learns it
                self._cancel(t, lease_until)
                self._settle(t.execution_id, lease_until)
                lost.add(task_id)
            else:
                t.lease_expires_at = lease_until
        return lost

    async def get_outcomes(self, task_ids: Sequence[str]) -> list[TaskOutcome]:
        out = []
        for tid in task_ids:
            t = self._tasks.get(tid)
            if t is not None and t.state in TERMINAL_TASK_STATES:
                out.append(TaskOutcome(t.id, t.state, t.result, t.error))
        return out

    # -- inspection ---------------------------------------------------------------------------
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        ex = self._executions.get(execution_id)
        return ex.copy() if ex is not None else None

    async def list_executions(
        self, limit: int = 10, offset: int = 0, state: str | None = None
    ) -> list[ExecutionRecord]:
        rows = [e for e in self._executions.values() if state is None or e.state == state]
        rows.sort(key=lambda e: (e.created_at, self._created_order[e.root_task_id]), reverse=True)
        return [e.copy() for e in rows[offset:offset + limit]]

    async def get_task(self, task_id: str) -> TaskRecord | None:
        t = self._tasks.get(task_id)
        return t.copy() if t is not None else None

    async def update_task(self, task: TaskRecord) -> None:
        t = self._tasks.get(task.id)
        if t is None:
            from stent.errors import BackendError

            raise BackendError(f"no task with id {task.id!r}")
        t.state = task.state
        t.worker_id = task.worker_id
        t.lease_expires_at = to_utc(task.lease_expires_at) if task.lease_expires_at else None
        t.due_at = to_utc(task.due_at)
        t.priority = task.priority
        t.queue = task.queue
        t.tags = tuple(task.tags)
        t.retries = task.retries
        t.crash_count = task.crash_count
        t.fence += 1
        task.fence = t.fence
        if t.state == "pending" or t.state in TERMINAL_TASK_STATES:
            self._wake_parent(t)

    async def list_tasks_for_execution(self, execution_id: str) -> list[TaskRecord]:
        rows = [t for t in self._tasks.values() if t.execution_id == execution_id]
        rows.sort(key=lambda t: self._created_order[t.id])
        return [t.copy() for t in rows]

    async def count_tasks(self, queue: str | None = None, state: str | None = None) -> int:
        return sum(
            1 for t in self._tasks.values()
            if (queue is None or t.queue == queue) and (state is None or t.state == state)
        )

    async def count_executions(self, state: str | None = None) -> int:
        return sum(1 for e in self._executions.values() if state is None or e.state == state)

    async def queue_depth(self, queue: str | None = None) -> int:
        return sum(1 for t in self._tasks.values() if t.state == "pending" and t.queue == queue)

    # -- maintenance and dead letters ------------------------------------------------------------
    async def cleanup_executions(self, older_than: datetime, limit: int | None = None) -> int:
        older_than = to_utc(older_than)
        finished = sorted(
            (e for e in self._executions.values()
             if e.state in TERMINAL_EXECUTION_STATES and e.finished_at is not None
             and e.finished_at < older_than),
            key=lambda e: (e.finished_at, self._created_order[e.root_task_id]),
        )
        doomed = [e.id for e in (finished if limit is None else finished[:max(limit, 0)])]
        gone = set(doomed)
        for eid in doomed:
            ex = self._executions.pop(eid)
            if ex.idempotency_key is not None:
                self._idem.pop(ex.idempotency_key, None)
            self._signals.pop(eid, None)
            self._waiters.pop(eid, None)
        for tid in [t.id for t in self._tasks.values() if t.execution_id in gone]:
            t = self._tasks.pop(tid)
            self._created_order.pop(tid, None)
            self._cancelled_from.pop(tid, None)
            self._children.pop(tid, None)
            if t.parent_id is not None:
                self._by_key.pop((t.parent_id, t.parent_attempt, t.seq), None)
            self._dead.pop(tid, None)
            # an entry without a result dies with its owner; a stored result outlives it
            for key in self._cache_owned.pop(tid, set()):
                entry = self._cache.get(key)
                if entry is not None and entry.owner_task_id == tid and not entry.stored:
                    del self._cache[key]
        return len(doomed)

    async def cleanup_dead_letters(self, older_than: datetime, limit: int | None = None) -> int:
        older_than = to_utc(older_than)
        doomed = sorted(
            (d.created_at, k) for k, d in self._dead.items() if d.created_at < older_than
        )
        if limit is not None:
            doomed = doomed[:max(limit, 0)]
        for _, k in doomed:
            del self._dead[k]
        return len(doomed)

    async def list_dead_letters(self, limit: int = 50) -> list[DeadLetterRecord]:
        rows = sorted(self._dead.values(), key=lambda d: d.created_at, reverse=True)
        return [d.copy() for d in rows[:limit]]

    async def get_dead_letter(self, task_id: str) -> DeadLetterRecord | None:
        d = self._dead.get(task_id)
        return d.copy() if d is not None else None

    async def replay_dead_letter(
        self, task_id: str, *, queue: str | None, reset_retries: bool, now: datetime,
        set_queue: bool = False,
    ) -> bool:
        now = to_utc(now)
        dl = self._dead.get(task_id)
        t = self._tasks.get(task_id)
        if dl is None or t is None or t.state != "failed":
            return False
        ex = self._executions.get(t.execution_id)
        if ex is not None and ex.state in ("cancelling", "cancelled", "timed_out"):
            return False  # a cancelled or timed-out execution stays so
        del self._dead[task_id]
        t.state = "pending"
        t.attempt += 1
        if reset_retries:
            t.retries = 0
        if set_queue:
            t.queue = queue
        t.crash_count = 0
        t.due_at = now
        t.error = None
        t.finished_at = None
        t.worker_id = None
        t.lease_expires_at = None
        t.fence += 1
        # Callers above it that failed because of it resume by replay, at the same attempt, so
        # their completed steps are not run again and they await this task's new outcome.
        node = t
        while node.parent_id is not None:
            parent = self._tasks.get(node.parent_id)
            if parent is None or parent.state != "failed":
                break
            parent.state = "waiting"
            parent.error = None
            parent.finished_at = None
            parent.fence += 1
            node = parent
        if node.parent_id is None:
            ex = self._executions.get(t.execution_id)
            if ex is not None and ex.state == "failed":
                ex.state = "running"
                ex.error = None
                ex.finished_at = None
                _progress(ex, "running", now, replayed_task=task_id)
                # what the failure cancelled is put back as it was (running: pending again)
                for other in self._tasks_of(ex.id):
                    before = self._cancelled_from.pop(other.id, None)
                    if before is not None and other.state == "cancelled":
                        other.state = "waiting" if before == "waiting" else "pending"
                        other.finished_at = None
                        other.fence += 1
        return True

    async def discard_dead_letter(self, task_id: str) -> bool:
        return self._dead.pop(task_id, None) is not None

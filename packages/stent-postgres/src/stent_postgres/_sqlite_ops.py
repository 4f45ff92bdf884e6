"""The engine's operations on SQLite, as plain functions of a ``sqlite3.Connection``.

Each runs on the connection thread inside the caller's savepoint of a group-committed
transaction (see ``_sqlite_db.py``), so it is atomic and sees a stable database; it may
issue several statements because they cost microseconds there, not thread hops. Every
state rule of the reference backend (``stent_testing.memory``) is a WHERE clause below.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from stent.errors import LeaseLostError
from stent.records import (
    CacheClaim,
    ClaimFilter,
    ExecutionEffect,
    Lease,
    NewExecution,
    NewTask,
    StepRecord,
    TaskOutcome,
    TaskRecord,
)

from ._sqlite_rows import (
    epoch,
    epoch_or_none,
    epoch_us,
    json_list,
    progress_entry,
    step_from_row,
    task_from_row,
    task_params,
)
from .migrations import load_queries

Q = load_queries("sqlite")


def create_execution(db: sqlite3.Connection, new: NewExecution, now: datetime) -> tuple[str, bool]:
    """Insert an execution and its root task unless the id or idempotency key is taken."""
    inserted = db.execute(Q["insert_execution"], {
        "id": new.id,
        "function": new.function,
        "root_task_id": new.root.id,
        "args": new.args,
        "queue": new.queue,
        "tags": json_list(new.tags),
        "priority": new.priority,
        "idempotency_key": new.idempotency_key,
        "deadline": epoch_or_none(new.deadline),
        "now": epoch(now),
        "entry": progress_entry("dispatched", now),
    }).fetchone()
    if inserted is None:
        row = db.execute(Q["execution_id_taken"], {
            "id": new.id, "idempotency_key": new.idempotency_key,
        }).fetchone()
        return str(row[0]), False
    params = task_params(new.root, now)
    params["execution_id"] = new.id
    db.execute(Q["insert_root_task"], params)
    return new.id, True


def claim(
    db: sqlite3.Connection, worker_id: str, claim_filter: ClaimFilter, limit: int,
    now: datetime, lease_until: datetime,
) -> list[TaskRecord]:
    """Lease up to ``limit`` eligible tasks in claim order; start their executions."""
    # Picking and leasing are two statements, but one transaction that holds the database's
    # write lock: no other connection or process can claim, finish or count in between.
    queues = claim_filter.queues
    candidates = db.execute(Q["claim_candidates"], {
        "now": epoch(now),
        "names": json_list(sorted(claim_filter.names)),
        "queues": None if queues is None else json_list([q for q in queues if q is not None]),
        "default_queue": queues is not None and None in queues,
        "tags": json_list(claim_filter.tags) if claim_filter.tags else None,
    })
    picked: list[int] = []
    live: dict[str, int] = {}  # live running instances of capped functions, this claim included
    try:
        while len(picked) < limit:
            rows = candidates.fetchmany(limit - len(picked))
            if not rows:
                break
            for row in rows:
                cap = row["max_concurrent"]
                if cap is not None:
                    name = row["step_name"]
                    if name not in live:
                        live[name] = db.execute(Q["count_live_instances"], {
                            "now": epoch(now), "step_name": name,
                        }).fetchone()[0]
                    if live[name] >= cap:
                        continue  # at its cap: leave it, take what comes after it
                    live[name] += 1
                picked.append(row["ordinal"])
    finally:
        candidates.close()
    if not picked:
        return []
    rows = db.execute(Q["claim_lease"], {
        "ordinals": json_list(picked), "worker_id": worker_id,
        "lease_until": epoch(lease_until), "now": epoch(now),
    }).fetchall()
    # RETURNING hands rows back in no particular order: restore claim order.
    position = {ordinal: i for i, ordinal in enumerate(picked)}
    rows.sort(key=lambda r: position[r["ordinal"]])
    roots = [r["execution_id"] for r in rows if r["parent_id"] is None]
    if roots:
        db.execute(Q["start_executions"], {
            "ids": json_list(roots), "now": epoch(now),
            "entry": progress_entry("running", now),
        })
    return [task_from_row(r) for r in rows]


def create_step(
    db: sqlite3.Connection, parent_id: str, parent_fence: int, new: NewTask,
    now: datetime, lease: Lease | None,
) -> tuple[TaskRecord, bool]:
    """Insert a child at its step key unless taken, fenced on the parent."""
    state = db.execute(Q["parent_execution_state"], {"parent_id": parent_id}).fetchone()
    if state is not None and state[0] not in _LIVE:
        raise LeaseLostError(f"the execution of task {parent_id} is {state[0]}: no new steps")
    params = task_params(new, now)
    params["parent_id"] = parent_id
    params["parent_fence"] = parent_fence
    if lease is not None and new.state == "pending":
        # Born claimed by the creating worker, so it can run locally without a poll.
        params.update(state="running", worker_id=lease.worker_id,
                      lease_expires_at=epoch(lease.expires_at), fence=1, started_at=epoch(now))
    else:
        born_finished = new.state in ("completed", "failed", "cancelled")
        params.update(worker_id=None, lease_expires_at=None, fence=0,
                      started_at=epoch(now) if born_finished else None)
    row = db.execute(Q["insert_step"], params).fetchone()
    if row is not None:
        # A step that ran before it was written can be born failed (with its dead letter)
        # or born waiting for its next attempt (logged like any retry), in this same write.
        _born(db, row["execution_id"], new, now)
        return task_from_row(row), True
    if db.execute(Q["task_is_held"], {"id": parent_id, "fence": parent_fence}).fetchone() is None:
        raise LeaseLostError(f"task {parent_id} is no longer held at fence {parent_fence}")
    existing = db.execute(Q["task_by_step_key"], params).fetchone()
    return task_from_row(existing), False


def load_steps(db: sqlite3.Connection, parent_id: str, attempt: int) -> list[StepRecord]:
    """Every recorded child of ``parent_id`` at ``attempt``, by sequence number."""
    rows = db.execute(Q["load_steps"], {"parent_id": parent_id, "attempt": attempt})
    return [step_from_row(r) for r in rows]


def _held_parent(db: sqlite3.Connection, parent_id: str, parent_fence: int) -> str:
    """The execution of a parent held at ``parent_fence`` whose execution is live."""
    row = db.execute(Q["held_parent"], {"id": parent_id, "fence": parent_fence}).fetchone()
    if row is None or not row["held"]:
        raise LeaseLostError(f"task {parent_id} is no longer held at fence {parent_fence}")
    if row["execution_state"] not in _LIVE:
        raise LeaseLostError(
            f"the execution of task {parent_id} is {row['execution_state']}: no new steps")
    return str(row["execution_id"])


def _step_rows(
    db: sqlite3.Connection, parent_id: str, news: Sequence[NewTask]
) -> dict[tuple[int, int], sqlite3.Row]:
    """The rows at the step keys of ``news`` under ``parent_id``, by (attempt, seq)."""
    seqs: dict[int, list[int]] = {}
    for new in news:
        seqs.setdefault(new.parent_attempt, []).append(new.seq)
    found: dict[tuple[int, int], sqlite3.Row] = {}
    for attempt, numbers in seqs.items():
        for row in db.execute(Q["steps_by_seqs"], {
            "parent_id": parent_id, "parent_attempt": attempt, "seqs": json_list(numbers),
        }):
            found[(row["parent_attempt"], row["seq"])] = row
    return found


def _step_params(
    parent_id: str, execution_id: str, new: NewTask, now: datetime
) -> dict[str, Any]:
    params = task_params(new, now)
    params["parent_id"] = parent_id
    params["execution_id"] = execution_id
    born_finished = new.state in ("completed", "failed", "cancelled")
    params["started_at"] = epoch(now) if born_finished else None
    return params


def _born(db: sqlite3.Connection, execution_id: str, new: NewTask, now: datetime) -> None:
    """The side effects of a step born failed (dead letter) or born retrying (progress)."""
    if new.state == "failed" and new.dead_letter_reason is not None:
        db.execute(Q["upsert_dead_letter"], {
            "task_id": new.id, "execution_id": execution_id,
            "step_name": new.step_name, "queue": new.queue,
            "reason": new.dead_letter_reason, "error": new.error, "now": epoch(now),
            "retries": new.retries,
        })
    elif new.state == "pending" and new.retries > 0:
        entry = progress_entry("retrying", now, task_id=new.id, step=new.step_name,
                               attempt=new.attempt)
        db.execute(Q["append_progress"], {"execution_id": execution_id, "entry": entry})


def create_steps(
    db: sqlite3.Connection, parent_id: str, parent_fence: int, news: Sequence[NewTask],
    now: datetime,
) -> list[tuple[TaskRecord, bool]]:
    """``create_step`` for many children: one fence check, one executemany of inserts."""
    execution_id = _held_parent(db, parent_id, parent_fence)
    if not news:
        return []
    # The write lock is held from here to the commit: what is taken now stays taken.
    taken = set(_step_rows(db, parent_id, news))
    fresh: list[NewTask] = []
    created: list[bool] = []
    for new in news:
        key = (new.parent_attempt, new.seq)
        created.append(key not in taken)
        if key not in taken:
            taken.add(key)  # a key twice in one batch: the first one is inserted
            fresh.append(new)
    if fresh:
        db.executemany(Q["insert_steps"],
                       [_step_params(parent_id, execution_id, new, now) for new in fresh])
        for new in fresh:
            if new.dead_letter_reason is not None or new.retries > 0:
                _born(db, execution_id, new, now)
    rows = _step_rows(db, parent_id, news)
    return [
        (task_from_row(rows[(new.parent_attempt, new.seq)]), was_created)
        for new, was_created in zip(news, created, strict=True)
    ]


def _insert_one_step(
    db: sqlite3.Connection, parent_id: str, execution_id: str, new: NewTask, now: datetime,
) -> TaskRecord:
    db.execute(Q["insert_steps"], _step_params(parent_id, execution_id, new, now))
    _born(db, execution_id, new, now)
    return task_from_row(db.execute(Q["get_task"], {"id": new.id}).fetchone())


def _existing_step(
    db: sqlite3.Connection, parent_id: str, new: NewTask
) -> TaskRecord | None:
    row = db.execute(Q["task_by_step_key"], {
        "parent_id": parent_id, "parent_attempt": new.parent_attempt, "seq": new.seq,
    }).fetchone()
    return None if row is None else task_from_row(row)


# -- signals -----------------------------------------------------------------------------------
def create_signal_wait(
    db: sqlite3.Connection, parent_id: str, parent_fence: int, new: NewTask,
    signal_name: str, now: datetime,
) -> tuple[TaskRecord, bool]:
    """Insert a signal step unless its key is taken: born completed with the oldest
    unconsumed signal of ``signal_name``, else a waiter of that name."""
    # One transaction holding the database's write lock: no send_signal can come between
    # looking for a signal and joining the waiters.
    execution_id = _held_parent(db, parent_id, parent_fence)
    existing = _existing_step(db, parent_id, new)
    if existing is not None:
        return existing, False
    signal = db.execute(Q["oldest_signal"], {
        "execution_id": execution_id, "name": signal_name,
    }).fetchone()
    if signal is not None:
        born = replace(new, state="completed", result=signal["payload"], error=None)
        task = _insert_one_step(db, parent_id, execution_id, born, now)
        db.execute(Q["consume_signal"], {"task_id": new.id, "ordinal": signal["ordinal"]})
        return task, True
    task = _insert_one_step(db, parent_id, execution_id, new, now)
    if task.state in ("pending", "waiting"):
        db.execute(Q["insert_signal_waiter"], {
            "task_id": task.id, "execution_id": execution_id, "name": signal_name,
        })
    return task, True


def send_signal(
    db: sqlite3.Connection, execution_id: str, name: str, payload: bytes, now: datetime
) -> str | None:
    """Queue a signal; the oldest pending or waiting waiter of ``name`` receives it at once."""
    if db.execute(Q["execution_exists"], {"id": execution_id}).fetchone() is None:
        return None
    where = {"execution_id": execution_id, "name": name}
    db.execute(Q["drop_finished_signal_waiters"], where)
    waiter = db.execute(Q["oldest_signal_waiter"], where).fetchone()
    receiver: str | None = None
    if waiter is not None:
        row = db.execute(Q["deliver_signal"], {
            "id": waiter["task_id"], "payload": payload, "now": epoch(now),
        }).fetchone()
        db.execute(Q["delete_signal_waiter"], {"ordinal": waiter["ordinal"]})
        receiver = str(waiter["task_id"])
        _completed(db, receiver, row, payload, now)
    db.execute(Q["insert_signal"], {
        "execution_id": execution_id, "name": name, "payload": payload,
        "consumed_by": receiver, "now": epoch(now),
    })
    return receiver or ""


# -- effects, cache, maintenance leases ----------------------------------------------------------
def _json_key_path(name: str) -> str:
    """The JSON path of the top-level key ``name``, quoted (``$."name"``).

    SQLite's JSON paths have no escapes inside a quoted key: a name with a double quote,
    a backslash or a control character cannot be addressed, so it is refused.
    """
    if not name or any(c in '"\\' or ord(c) < 0x20 for c in name):
        raise ValueError(f"invalid counter or state name {name!r}")
    return f'$."{name}"'


def record_effect(
    db: sqlite3.Connection, parent_id: str, parent_fence: int, new: NewTask,
    effect: ExecutionEffect, now: datetime,
) -> tuple[TaskRecord, bool]:
    """Insert a born-completed step; only when it is created, apply ``effect``."""
    value: dict[str, object]
    if effect.kind == "increment":
        query, value = "increment_counter", {"delta": effect.delta}
    elif effect.kind == "set_state":
        json.loads(effect.value_json)  # invalid JSON raises ValueError: nothing written
        query, value = "set_custom_state", {"value": effect.value_json}
    else:
        raise ValueError(f"unknown execution effect {effect.kind!r}")
    path = _json_key_path(effect.name)
    execution_id = _held_parent(db, parent_id, parent_fence)
    existing = _existing_step(db, parent_id, new)
    if existing is not None:
        return existing, False  # a replay: the effect was applied when the step was written
    task = _insert_one_step(db, parent_id, execution_id, new, now)
    db.execute(Q[query], {"execution_id": execution_id, "path": path, **value})
    return task, True


def cache_claim(
    db: sqlite3.Connection, key: str, task_id: str, arg_digest: str, ttl_s: float | None,
    now: datetime,
) -> CacheClaim:
    """Look up or take the cache key ``key`` for ``task_id``."""
    at = epoch(now)
    entry = db.execute(Q["cache_entry"], {"key": key}).fetchone()
    if entry is not None:
        owner, digest = str(entry["task_id"]), str(entry["arg_digest"])
        stored = entry["result"] is not None
        if stored and (entry["expires_at"] is None or entry["expires_at"] > at):
            if digest != arg_digest:
                return CacheClaim("conflict", owner_task_id=owner, arg_digest=digest)
            db.execute(Q["append_progress_of_task"], {
                "task_id": task_id,
                "entry": progress_entry("cache_hit", now, task_id=task_id, key=key),
            })
            return CacheClaim("hit", result=entry["result"], owner_task_id=owner,
                              arg_digest=digest)
        if (not stored and owner != task_id and entry["owner_state"] is not None
                and entry["owner_state"] not in ("completed", "failed", "cancelled")):
            return CacheClaim("busy", owner_task_id=owner, arg_digest=digest)
    db.execute(Q["take_cache_key"], {
        "key": key, "task_id": task_id, "arg_digest": arg_digest, "ttl_s": ttl_s, "now": at,
    })
    return CacheClaim("owner", owner_task_id=task_id, arg_digest=arg_digest)


def cleanup_cache(db: sqlite3.Connection, now: datetime, limit: int) -> int:
    """Delete up to ``limit`` cache entries whose result expired before ``now``."""
    if limit <= 0:
        return 0
    return int(db.execute(Q["cleanup_cache"], {"now": epoch(now), "limit": limit}).rowcount)


def acquire_maintenance(
    db: sqlite3.Connection, name: str, holder: str, until: datetime, now: datetime
) -> bool:
    """Take or renew the maintenance lease ``name`` for ``holder``."""
    return db.execute(Q["acquire_maintenance"], {
        "name": name, "holder": holder, "until": epoch(until), "now": epoch(now),
    }).fetchone() is not None


def _finish_execution(
    db: sqlite3.Connection, execution_id: str, state: str, now: datetime,
    result: bytes | None, error: bytes | None,
) -> None:
    """Complete or fail a live execution and cancel what is left of it (same transaction)."""
    finished = db.execute(Q["finish_execution"], {
        "execution_id": execution_id, "state": state, "result": result, "error": error,
        "now": epoch(now), "entry": progress_entry(state, now),
    }).rowcount
    if finished:
        db.execute(Q["stop_unfinished_tasks"], {"id": execution_id, "now": epoch(now)})


def complete_task(
    db: sqlite3.Connection, task_id: str, fence: int, result: bytes, now: datetime
) -> bool:
    """Record a result (fenced); wake the parent or finish the execution."""
    row = db.execute(Q["complete_task"], {
        "id": task_id, "fence": fence, "result": result, "now": epoch(now),
    }).fetchone()
    if row is None:
        return False
    _completed(db, task_id, row, result, now)
    return True


def _completed(
    db: sqlite3.Connection, task_id: str, row: sqlite3.Row, result: bytes, now: datetime
) -> None:
    """What follows a task's completion (``row``: its parent_id and execution_id)."""
    db.execute(Q["store_cached_result"], {"id": task_id, "result": result,
                                          "now_us": epoch_us(now)})
    if row["parent_id"] is not None:
        db.execute(Q["wake_parent"], {"parent_id": row["parent_id"]})
    else:
        _finish_execution(db, row["execution_id"], "completed", now, result, None)
    _settle(db, row["execution_id"], now)  # a cancelling execution whose last task ended


def fail_task(
    db: sqlite3.Connection, task_id: str, fence: int, error: bytes, now: datetime,
    dead_letter_reason: str | None,
) -> bool:
    """Record a final failure (fenced), with a dead letter when a reason is given."""
    row = db.execute(Q["fail_task"], {
        "id": task_id, "fence": fence, "error": error, "now": epoch(now),
    }).fetchone()
    if row is None:
        return False
    if dead_letter_reason is not None:
        db.execute(Q["upsert_dead_letter"], {
            "task_id": task_id, "execution_id": row["execution_id"],
            "step_name": row["step_name"], "queue": row["queue"],
            "reason": dead_letter_reason, "error": error, "now": epoch(now),
            "retries": row["retries"],
        })
    if row["parent_id"] is not None:
        db.execute(Q["wake_parent"], {"parent_id": row["parent_id"]})
    else:
        _finish_execution(db, row["execution_id"], "failed", now, None, error)
    _settle(db, row["execution_id"], now)
    return True


def retry_task(
    db: sqlite3.Connection, task_id: str, fence: int, error: bytes, due_at: datetime,
    now: datetime,
) -> bool:
    """Schedule the next attempt (fenced) and log it."""
    if _cancel_if_stopping(db, task_id, fence, now):
        return True
    row = db.execute(Q["retry_task"], {
        "id": task_id, "fence": fence, "error": error, "due_at": epoch(due_at),
    }).fetchone()
    if row is None:
        return False
    entry = progress_entry("retrying", now, task_id=task_id, step=row["step_name"],
                           attempt=row["attempt"])
    db.execute(Q["append_progress"], {"execution_id": row["execution_id"], "entry": entry})
    return True


def mark_alone(db: sqlite3.Connection, task_id: str, fence: int, alone: bool) -> bool:
    """Mark whether a running task's current run is alone on its worker (fenced)."""
    return db.execute(Q["mark_alone"], {"id": task_id, "fence": fence,
                                        "alone": int(alone)}).rowcount > 0


def release_task(
    db: sqlite3.Connection, task_id: str, fence: int, now: datetime | None = None
) -> bool:
    """Give a running task back (fenced)."""
    if now is not None and _cancel_if_stopping(db, task_id, fence, now):
        return True
    return db.execute(Q["release_task"], {"id": task_id, "fence": fence}).rowcount > 0


def suspend_task(
    db: sqlite3.Connection, task_id: str, fence: int, awaited: Sequence[str], now: datetime
) -> bool:
    """Drop the lease of a task waiting on ``awaited`` (fenced): waiting, or pending."""
    if _cancel_if_stopping(db, task_id, fence, now):
        return True
    row = db.execute(Q["suspend_task"], {
        "id": task_id, "fence": fence, "awaited": json_list(awaited),
    }).fetchone()
    if row is None:
        return False
    if row["state"] == "waiting":
        entry = progress_entry("waiting", now, task_id=task_id, step=row["step_name"])
        db.execute(Q["append_progress"], {"execution_id": row["execution_id"], "entry": entry})
    return True


def renew_leases(
    db: sqlite3.Connection, worker_id: str, held: Sequence[tuple[str, int]],
    lease_until: datetime,
) -> set[str]:
    """Extend the leases still held (fenced, and by this worker); return the lost ids."""
    until = epoch(lease_until)
    lost: set[str] = set()
    for task_id, fence in held:
        row = db.execute(Q["task_execution_state"], {"id": task_id, "fence": fence}).fetchone()
        if row is None or row["worker_id"] != worker_id:
            lost.add(task_id)  # not held, or held by another worker: leave it alone
            continue
        if row["execution_state"] not in _LIVE:
            # cancelled or timed out: the heartbeat is how a remote worker learns it
            _cancel_held(db, task_id, fence, lease_until)
            lost.add(task_id)
            continue
        params: dict[str, Any] = {
            "id": task_id, "fence": fence, "worker_id": worker_id, "lease_until": until,
        }
        if db.execute(Q["renew_lease"], params).rowcount == 0:
            lost.add(task_id)
    return lost


def get_outcomes(db: sqlite3.Connection, task_ids: Sequence[str]) -> list[TaskOutcome]:
    """Outcomes of the finished ones of ``task_ids``, in the order asked."""
    found = {
        r["id"]: TaskOutcome(r["id"], r["state"], r["result"], r["error"])
        for r in db.execute(Q["get_outcomes"], {"ids": json_list(task_ids)})
    }
    return [found[t] for t in task_ids if t in found]


# -- cancellation and deadlines ----------------------------------------------------------------
_LIVE = ("pending", "running")


def _settle(db: sqlite3.Connection, execution_id: str, now: datetime) -> None:
    db.execute(Q["settle_cancelling_execution"], {
        "id": execution_id, "now": epoch(now), "entry": progress_entry("cancelled", now),
    })


def _cancel_held(db: sqlite3.Connection, task_id: str, fence: int, now: datetime) -> bool:
    row = db.execute(Q["cancel_held_task"], {
        "id": task_id, "fence": fence, "now": epoch(now),
    }).fetchone()
    if row is None:
        return False
    if row["parent_id"] is not None:
        db.execute(Q["wake_parent"], {"parent_id": row["parent_id"]})
    _settle(db, row["execution_id"], now)
    return True


def _cancel_if_stopping(db: sqlite3.Connection, task_id: str, fence: int, now: datetime) -> bool:
    """Cancel a held task whose execution is cancelling or over; True if it did."""
    row = db.execute(Q["task_execution_state"], {"id": task_id, "fence": fence}).fetchone()
    if row is None or row["execution_state"] in _LIVE:
        return False
    return _cancel_held(db, task_id, fence, now)


def cancel_execution(
    db: sqlite3.Connection, execution_id: str, error: bytes, now: datetime
) -> str | None:
    """Cancelling (or cancelled at once, when nothing runs); its unstarted tasks cancelled."""
    row = db.execute(Q["execution_state"], {"id": execution_id}).fetchone()
    if row is None:
        return None
    if row["state"] not in _LIVE:
        return str(row["state"])
    db.execute(Q["cancel_unfinished_tasks"], {"id": execution_id, "now": epoch(now),
                                               "running": False})
    db.execute(Q["mark_execution_cancelling"], {
        "id": execution_id, "error": error, "entry": progress_entry("cancelling", now),
    })
    _settle(db, execution_id, now)
    return str(db.execute(Q["execution_state"], {"id": execution_id}).fetchone()[0])


def cancel_task(db: sqlite3.Connection, task_id: str, fence: int, now: datetime) -> bool:
    """A running task stopped for its execution's cancellation (fenced)."""
    return _cancel_held(db, task_id, fence, now)


def expire_executions(
    db: sqlite3.Connection, error: bytes, now: datetime, limit: int
) -> list[str]:
    """Time out executions past their deadline; cancel orphans of stopped executions."""
    ids = [r["id"] for r in db.execute(Q["expired_executions"], {"now": epoch(now),
                                                                   "limit": limit})]
    for execution_id in ids:
        db.execute(Q["time_out_execution"], {
            "id": execution_id, "error": error, "now": epoch(now),
            "entry": progress_entry("timed_out", now),
        })
        db.execute(Q["cancel_unfinished_tasks"], {"id": execution_id, "now": epoch(now),
                                                   "running": True})
    for row in db.execute(Q["orphans_of_stopped_executions"], {"now": epoch(now)}).fetchall():
        _cancel_held(db, row["id"], row["fence"], now)
    return ids

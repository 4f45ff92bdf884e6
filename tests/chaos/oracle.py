"""The chaos checker: judges a run by the ledger (what step bodies did, ``ledger.py``) against
Stent's tables (read through the backend's API) after the dust settles.

It verifies:

- **no loss**: every execution expected to complete is ``completed`` with every task
  ``completed``; every one expected to be dead-lettered is ``failed`` with a dead letter;
  no other dead letter exists;
- **one recorded completion per step**: one row per step key, and for each logical step
  (the ``key`` its body ledgers) exactly one completed row, written by a run that happened;
- **at most 1 + (lease losses) body runs**: a run is *stale* when the fence it held was
  later superseded (its holder's final fence is higher: its lease was lost or given back).
  At most one run of a step may be non-stale, and none may start after the step's
  completion was recorded;
- **max_concurrent**: ledger intervals of a capped function never overlap more than its cap
  (a run that never ended ends when its process died);
- **sleeps never fire early**: the first continuation of a workflow after its durable sleep
  (engine clock, ledgered) is not before the sleep's stored due time.

Returns a JSON-able report whose ``ok`` says whether all of that held.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from stent.records import TERMINAL_TASK_STATES, ExecutionRecord, TaskRecord

from .ledger import Run, read_ledger

#: ledger (wall clock) against rows written with the engine clock: both are this machine's
#: clock, the engine's corrected by its offset from the database's (the same machine here)
CLOCK_SLACK_S = 0.05
_SHOWN = 20


def _head(items: Sequence[Any]) -> list[Any]:
    return list(items[:_SHOWN])


async def _load(backend: Any, execution_ids: Iterable[str]
                ) -> tuple[dict[str, ExecutionRecord | None], dict[str, list[TaskRecord]]]:
    sem = asyncio.Semaphore(8)

    async def one(eid: str) -> tuple[str, ExecutionRecord | None, list[TaskRecord]]:
        async with sem:
            return eid, await backend.get_execution(eid), await backend.list_tasks_for_execution(eid)

    loaded = await asyncio.gather(*(one(e) for e in execution_ids))
    return {e: x for e, x, _ in loaded}, {e: ts for e, _, ts in loaded}


def overlap_timeline(runs: Iterable[Run], deaths: dict[int, float]) -> list[tuple[float, int]]:
    """``(time, runs in progress just after it)`` at every start and end; a run without an
    end lasts until its process died (forever if it is not known to have died)."""
    events: list[tuple[float, int]] = []
    for r in runs:
        end = r.end if r.end is not None else deaths.get(r.pid, float("inf"))
        events += [(r.start, 1), (end, -1)]
    events.sort(key=lambda e: (e[0], e[1]))  # an end at the same instant comes first
    timeline, now = [], 0
    for t, d in events:
        now += d
        timeline.append((t, now))
    return timeline


def max_overlap(runs: Iterable[Run], deaths: dict[int, float]) -> tuple[int, float | None]:
    """The most runs in progress at once, and when."""
    best, at = 0, None
    for t, n in overlap_timeline(runs, deaths):
        if n > best:
            best, at = n, t
    return best, at


async def check(
    backend: Any, ledger_dir: str | Path, *, completed: Sequence[str],
    dead: Sequence[str] = (), caps: dict[str, int] | None = None,
    deaths: dict[int, float] | None = None,
) -> dict[str, Any]:
    """Check a finished chaos run. ``completed``/``dead``: the dispatched executions expected
    to complete / to end dead-lettered; ``caps``: function name -> ``max_concurrent``;
    ``deaths``: pid -> wall time the process died."""
    deaths = deaths or {}
    ledger = read_ledger(ledger_dir)
    executions, tasks = await _load(backend, [*completed, *dead])
    rows: dict[str, TaskRecord] = {t.id: t for ts in tasks.values() for t in ts}
    dead_letters = await backend.list_dead_letters(limit=100_000)
    lettered = {d.task_id: d for d in dead_letters}
    problems: dict[str, list[Any]] = defaultdict(list)

    # -- no loss --------------------------------------------------------------------------
    for eid in completed:
        ex = executions[eid]
        if ex is None or ex.state != "completed":
            problems["lost_executions"].append([eid, ex.state if ex else "missing"])
        problems["lost_tasks"] += [[t.id, t.step_name, t.state] for t in tasks[eid]
                                   if t.state != "completed"]
    for eid in dead:
        ex = executions[eid]
        if ex is None or ex.state != "failed":
            problems["dead_not_failed"].append([eid, ex.state if ex else "missing"])
        if not any(t.id in lettered for t in tasks[eid]):
            problems["dead_letter_missing"].append(eid)
    expected_dead = set(dead)
    problems["unexpected_dead_letters"] = [
        [d.task_id, d.step_name, d.reason] for d in dead_letters
        if d.execution_id not in expected_dead]
    unfinished = [t.id for t in rows.values() if t.state not in TERMINAL_TASK_STATES]
    if dead:
        problems["unfinished_tasks"] = unfinished

    # -- one completion per step key and per logical step ------------------------------------
    by_step_key: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    for t in rows.values():
        if t.parent_id is not None:
            by_step_key[(t.parent_id, t.parent_attempt, t.seq)].append(t.id)
    problems["duplicate_step_rows"] = [[*k, ids] for k, ids in by_step_key.items()
                                       if len(ids) > 1]

    runs_by_key: dict[str, list[Run]] = defaultdict(list)
    for r in ledger.runs:
        if r.execution in executions:  # the executions this check is about
            runs_by_key[r.key].append(r)
    completed_set = set(completed)
    stale_runs = extra_runs = 0
    for key, runs in runs_by_key.items():
        extra_runs += len(runs) - 1
        recorded = {r.task: rows[r.task] for r in runs
                    if r.task in rows and rows[r.task].state == "completed"}
        expected = runs[0].execution in completed_set
        if expected and len(recorded) != 1:
            problems["completions_not_one"].append([key, sorted(recorded)])
        done = next(iter(recorded.values()), None)
        winner = None
        if done is not None:
            winner = next((r for r in runs if r.task == done.id and (
                r.token_kind == "inline" or r.fence == done.fence)), None)
            if winner is None:
                problems["completion_without_run"].append([key, done.id])
        fresh = []
        for r in runs:
            holder = rows.get(r.holder)
            if holder is None:
                problems["unknown_fence_holder"].append([key, r.holder])
                continue
            if r.fence < holder.fence:
                # superseded fence: a lease loss explains this run (the winner of an inline
                # step is often stale too: its caller was taken over after recording it)
                stale_runs += r is not winner
                continue
            fresh.append(r)
            if (done is not None and r is not winner and done.finished_at is not None
                    and r.start > done.finished_at.timestamp() + CLOCK_SLACK_S):
                problems["ran_after_completion"].append(
                    [key, r.run, r.pid, round(r.start - done.finished_at.timestamp(), 3)])
        if len(fresh) > 1:
            problems["ran_twice_without_lease_loss"].append(
                [key, [[r.task, r.fence, r.token_kind, r.pid] for r in fresh]])
    expected_keys = [k for k, rs in runs_by_key.items() if rs[0].execution in completed_set]

    # -- max_concurrent ------------------------------------------------------------------------
    overlaps = {}
    for fn, cap in (caps or {}).items():
        fn_runs = [r for r in ledger.runs if r.fn == fn]
        peak, at = max_overlap(fn_runs, deaths)
        overlaps[fn] = peak
        if peak > cap:
            problems["cap_exceeded"].append([fn, peak, cap, at])
        problems["runs_never_ended"] += [[r.run, r.pid] for r in fn_runs
                                         if r.end is None and r.pid not in deaths]

    # -- sleeps ------------------------------------------------------------------------------
    lateness = []
    for eid in completed:
        for t in tasks[eid]:
            if t.kind != "sleep":
                continue
            woke = ledger.woke.get(eid)
            if not woke:
                problems["sleep_continuation_not_ledgered"].append(eid)
                continue
            late = min(woke) - t.due_at.timestamp()
            lateness.append(late)
            if late < 0:
                problems["sleep_fired_early"].append([eid, round(late, 6)])

    if ledger.bad_lines:
        problems["bad_ledger_lines"].append(ledger.bad_lines)
    found = {k: v for k, v in problems.items() if v}
    return {
        "ok": not found,
        "executions": len(executions),
        "tasks": len(rows),
        "steps": len(expected_keys),
        "body_runs": sum(len(rs) for rs in runs_by_key.values()),
        "lost": len(problems["lost_executions"]) + len(problems["lost_tasks"]),
        "duplicates": extra_runs,
        "loss_affected_runs": stale_runs,
        "dead_letters": len(dead_letters),
        "max_overlap": overlaps,
        "sleeps_checked": len(lateness),
        "sleep_lateness_s": {
            "min": round(min(lateness), 4), "p50": round(statistics.median(lateness), 4),
            "max": round(max(lateness), 4)} if lateness else None,
        "problems": {k: {"count": len(v), "first": _head(v)} for k, v in found.items()},
    }


def write_result(result: dict[str, Any], path: Path) -> None:
    """Write a chaos result as JSON and print it (pytest shows it with ``-s`` or on failure)."""
    text = json.dumps(result, indent=2, default=str)
    path.write_text(text + "\n")
    print(f"chaos result ({path}):\n{text}")

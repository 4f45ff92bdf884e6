"""The chaos checker catches what it is there to catch: hand-made ledgers and rows, no
processes. (A checker that passes everything would make every chaos test pass.)"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stent.records import DeadLetterRecord, ExecutionRecord, TaskRecord

from .oracle import check

T0 = 1_800_000_000.0


def at(t: float) -> datetime:
    return datetime.fromtimestamp(T0 + t, UTC)


@dataclass
class Tables:
    """A stand-in for a backend's read API, holding hand-made rows."""

    executions: dict[str, ExecutionRecord] = field(default_factory=dict)
    tasks: list[TaskRecord] = field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)

    def execution(self, eid: str, state: str = "completed") -> None:
        self.executions[eid] = ExecutionRecord(eid, "chaos.workflow", state, eid, at(0))
        self.task(eid, eid, None, "chaos.workflow", state=state, fence=1)

    def task(self, tid: str, eid: str, parent: str | None, name: str, *, seq: int = 0,
             state: str = "completed", fence: int = 0, kind: str = "function",
             due: float = 0.0, finished: float = 1.0) -> None:
        self.tasks.append(TaskRecord(
            id=tid, execution_id=eid, parent_id=parent, parent_attempt=1, seq=seq,
            step_name=name, kind=kind, state=state, args=b"", arg_digest="", created_at=at(0),
            due_at=at(due), fence=fence, finished_at=at(finished)))

    async def get_execution(self, eid: str) -> ExecutionRecord | None:
        return self.executions.get(eid)

    async def list_tasks_for_execution(self, eid: str) -> list[TaskRecord]:
        return [t for t in self.tasks if t.execution_id == eid]

    async def list_dead_letters(self, limit: int = 50) -> list[DeadLetterRecord]:
        return self.dead_letters[:limit]


class Lines:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "ledger-1.jsonl"
        self.n = 0

    def run(self, key: str, task: str, holder: str, fence: int, start: float,
            end: float | None = 1.0, *, pid: int = 1, fn: str = "chaos.step",
            kind: str = "inline", execution: str = "e1") -> None:
        self.n += 1
        rid = f"r{self.n}"
        self._write(ev="start", run=rid, key=key, fn=fn, task=task, exec=execution,
                    token=[holder, fence, kind], pid=pid, t=T0 + start)
        if end is not None:
            self._write(ev="end", run=rid, outcome="ok", pid=pid, t=T0 + end)

    def woke(self, execution: str, clock: float) -> None:
        self._write(ev="woke", exec=execution, clock=T0 + clock, pid=1, t=T0 + clock)

    def _write(self, **entry: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")


def one_step(tmp_path: Path, root_fence: int = 1) -> tuple[Tables, Lines]:
    db = Tables()
    db.execution("e1")
    db.tasks[0].fence = root_fence
    db.task("s1", "e1", "e1", "chaos.step")
    return db, Lines(tmp_path)


async def test_a_clean_run_passes(tmp_path: Path) -> None:
    db, ledger = one_step(tmp_path)
    ledger.run("w:s0", "s1", "e1", 1, 0.1, 0.5)
    report = await check(db, tmp_path, completed=["e1"])
    assert report["ok"], report
    assert report["duplicates"] == 0


async def test_a_second_run_without_a_lease_loss_is_caught(tmp_path: Path) -> None:
    db, ledger = one_step(tmp_path)
    ledger.run("w:s0", "sX", "e1", 1, 0.1, 0.2)  # not recorded, yet its fence was current
    ledger.run("w:s0", "s1", "e1", 1, 0.3, 0.5)
    report = await check(db, tmp_path, completed=["e1"])
    assert "ran_twice_without_lease_loss" in report["problems"]


async def test_a_second_run_after_a_lease_loss_is_allowed(tmp_path: Path) -> None:
    db, ledger = one_step(tmp_path, root_fence=2)
    ledger.run("w:s0", "sX", "e1", 1, 0.1, None, pid=7)  # killed under fence 1
    ledger.run("w:s0", "s1", "e1", 2, 0.3, 0.5)
    report = await check(db, tmp_path, completed=["e1"], deaths={7: T0 + 0.2})
    assert report["ok"], report
    assert report["loss_affected_runs"] == 1


async def test_a_run_after_the_recorded_completion_is_caught(tmp_path: Path) -> None:
    db, ledger = one_step(tmp_path, root_fence=2)
    ledger.run("w:s0", "s1", "e1", 1, 0.1, 0.5)  # recorded at t=1.0 under fence 1
    ledger.run("w:s0", "sY", "e1", 2, 3.0, 3.2)  # the caller was taken over and ran it again
    report = await check(db, tmp_path, completed=["e1"])
    assert "ran_after_completion" in report["problems"]


async def test_a_lost_or_unrecorded_step_is_caught(tmp_path: Path) -> None:
    db, ledger = one_step(tmp_path)
    db.executions["e1"].state = "running"
    db.tasks[1].state = "pending"
    ledger.run("w:s0", "s1", "e1", 1, 0.1, 0.5)
    report = await check(db, tmp_path, completed=["e1"])
    assert {"lost_executions", "lost_tasks", "completions_not_one"} <= set(report["problems"])


async def test_an_unexpected_dead_letter_is_caught(tmp_path: Path) -> None:
    db, ledger = one_step(tmp_path)
    ledger.run("w:s0", "s1", "e1", 1, 0.1, 0.5)
    db.dead_letters.append(DeadLetterRecord("s1", "e1", "chaos.step", None, "poison task",
                                            None, at(2), 0))
    report = await check(db, tmp_path, completed=["e1"])
    assert "unexpected_dead_letters" in report["problems"]


async def test_overlap_above_the_cap_is_caught_and_a_killed_run_ends_at_its_death(
    tmp_path: Path,
) -> None:
    db = Tables()
    ledger = Lines(tmp_path)
    for i in range(4):
        db.execution(f"e{i}")
        db.task(f"c{i}", f"e{i}", f"e{i}", "chaos.capped_step", fence=1)
    ledger.run("c:0", "c0", "c0", 1, 0.0, None, pid=9, fn="chaos.capped_step", kind="own",
               execution="e0")
    for i in (1, 2, 3):
        ledger.run(f"c:{i}", f"c{i}", f"c{i}", 1, 1.0, 2.0, fn="chaos.capped_step",
                   kind="own", execution=f"e{i}")
    ids = [f"e{i}" for i in range(4)]
    caps = {"chaos.capped_step": 3}
    alive = await check(db, tmp_path, completed=ids, caps=caps, deaths={9: T0 + 1.5})
    assert alive["max_overlap"] == {"chaos.capped_step": 4}
    assert "cap_exceeded" in alive["problems"]
    dead_first = await check(db, tmp_path, completed=ids, caps=caps, deaths={9: T0 + 0.5})
    assert dead_first["max_overlap"] == {"chaos.capped_step": 3}
    assert "cap_exceeded" not in dead_first["problems"]


async def test_a_sleep_that_fired_early_is_caught(tmp_path: Path) -> None:
    db, ledger = one_step(tmp_path)
    db.task("z1", "e1", "e1", "stent.sleep", seq=1, kind="sleep", due=5.0)
    ledger.run("w:s0", "s1", "e1", 1, 0.1, 0.5)
    ledger.woke("e1", 4.99)
    ledger.woke("e1", 6.0)  # a later replay does not hide the early first continuation
    report = await check(db, tmp_path, completed=["e1"])
    assert report["problems"]["sleep_fired_early"]["count"] == 1

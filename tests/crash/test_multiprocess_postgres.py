"""Several worker processes on one PostgreSQL schema: every workflow completes, no step body
runs twice without a crash, and a SIGKILLed worker's tasks are taken over after its lease."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from stent import Result, Stent
from stent.steps import decode_call
from stent_testing.pg import create_test_backend, dispose_test_backend

from . import journal_app

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@pytest.fixture
async def pg_backend() -> AsyncIterator[Any]:
    backend = await create_test_backend()
    try:
        yield backend
    finally:
        await dispose_test_backend(backend)


def _start_worker(backend: Any, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash.journal_app", backend.dsn, backend.schema],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )


def _journal(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait(10)


async def test_three_workers_run_300_workflows_each_step_once(
    pg_backend: Any, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.touch()
    ex = Stent(pg_backend)
    ids = [await ex.dispatch(journal_app.wide_workflow, str(journal), wf, 3) for wf in range(300)]
    procs = [_start_worker(pg_backend, tmp_path / f"w{i}.log") for i in range(3)]
    try:
        results = await asyncio.wait_for(asyncio.gather(*(ex.wait_for(i) for i in ids)), 120)
    finally:
        _stop(procs)
        await ex.shutdown()
    assert results == [Result.Ok(3)] * 300
    entries = _journal(journal)
    roots = Counter(e["wf"] for e in entries if e["event"] == "root")
    starts = Counter((e["wf"], e["n"]) for e in entries if e["event"] == "start")
    assert set(roots.values()) == {1}, "a workflow body was claimed twice"
    assert len(starts) == 900 and set(starts.values()) == {1}, "a step body ran twice"
    pids = {e["pid"] for e in entries}
    assert len(pids) >= 2, f"the work was not shared between processes: {pids}"
    assert await pg_backend.count_tasks(state="running") == 0


async def test_sigkilled_worker_loses_nothing_and_its_tasks_are_taken_over(
    pg_backend: Any, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.touch()
    ex = Stent(pg_backend)
    ids = [await ex.dispatch(journal_app.workflow, str(journal), wf, 6) for wf in range(30)]
    procs = [_start_worker(pg_backend, tmp_path / f"w{i}.log") for i in range(3)]
    victim = procs[0]
    try:
        for _ in range(400):
            await asyncio.sleep(0.05)
            pids = {e["pid"] for e in _journal(journal)}
            if victim.pid in pids and await pg_backend.count_tasks(state="completed") >= 20:
                break
        else:
            raise AssertionError("the workers made no progress")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        completed_before_kill: set[tuple[int, int]] = set()
        for eid in ids:
            for t in await pg_backend.list_tasks_for_execution(eid):
                if t.parent_id is not None and t.state == "completed":
                    args, _ = decode_call(ex, t.args)
                    completed_before_kill.add((args[1], args[2]))
        held_by_victim = [
            t for eid in ids for t in await pg_backend.list_tasks_for_execution(eid)
            if t.state == "running" and t.worker_id and str(victim.pid) in t.worker_id
        ]
        results = await asyncio.wait_for(asyncio.gather(*(ex.wait_for(i) for i in ids)), 90)
    finally:
        _stop(procs)
        await ex.shutdown()
    assert results == [Result.Ok(15)] * 30
    starts = Counter((e["wf"], e["n"]) for e in _journal(journal) if e["event"] == "start")
    rerun = {k: v for k, v in starts.items() if k in completed_before_kill and v != 1}
    assert rerun == {}, f"completed steps ran again after the kill: {rerun}"
    assert held_by_victim, "the victim held no lease when it died: the test proved nothing"
    for t in held_by_victim:
        after = await pg_backend.get_task(t.id)
        assert after is not None and after.state == "completed" and after.crash_count >= 1

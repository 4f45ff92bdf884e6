"""A real worker process is SIGKILLed mid-run; a new one finishes every workflow by replay,
and no step that had completed before the kill runs again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from stent import Result, Stent
from stent.steps import decode_call
from stent_postgres import SQLiteBackend

from . import journal_app

HERE = Path(__file__).resolve().parent


def _start_worker(db: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash.journal_app", str(db)],
        cwd=HERE.parent.parent, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )


async def test_sigkilled_worker_loses_nothing_and_completed_steps_do_not_rerun(
    tmp_path: Path,
) -> None:
    db = tmp_path / "crash.sqlite"
    journal = tmp_path / "journal.jsonl"
    journal.touch()
    backend = SQLiteBackend(db)
    await backend.init_db()
    ex = Stent(backend)
    ids = [await ex.dispatch(journal_app.workflow, str(journal), wf, 6) for wf in range(8)]

    first = _start_worker(db, tmp_path / "w1.log")
    completed_before_kill: set[tuple[int, int]] = set()
    try:
        for _ in range(400):  # until a good part of the work is done, at most ~20 s
            await asyncio.sleep(0.05)
            done = await backend.count_tasks(state="completed")
            if done >= 12:
                break
        else:
            raise AssertionError("worker #1 made no progress: " + (tmp_path / "w1.log").read_text())
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        for eid in ids:
            for t in await backend.list_tasks_for_execution(eid):
                if t.parent_id is not None and t.state == "completed":
                    args, _ = decode_call(ex, t.args)
                    completed_before_kill.add((args[1], args[2]))
        assert completed_before_kill, "nothing had completed before the kill"
        assert await backend.count_executions(state="completed") < len(ids), "killed too late"
    finally:
        if first.poll() is None:
            first.kill()

    second = _start_worker(db, tmp_path / "w2.log")
    try:
        results = await asyncio.wait_for(asyncio.gather(*(ex.wait_for(i) for i in ids)), 60)
    finally:
        second.kill()
        second.wait(10)
    assert results == [Result.Ok(15)] * len(ids)

    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    starts = Counter((e["wf"], e["n"]) for e in lines if e["event"] == "start")
    rerun = {k: starts[k] for k in completed_before_kill if starts[k] != 1}
    assert rerun == {}, f"completed steps ran again after the crash: {rerun}"
    pids = {e["pid"] for e in lines}
    assert pids == {first.pid, second.pid}
    assert all(starts[(wf, n)] >= 1 for wf in range(8) for n in range(6))
    await ex.shutdown()
    await backend.close()

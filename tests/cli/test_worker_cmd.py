"""``stent worker`` as a real process: serving, SIGTERM/SIGINT drain, and option errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stent import Stent
from stent.backend import Backend

from . import cli_workflows as wf
from .conftest import HERE, Database, run_stent, stent_env

STEPS = 4
STEP_SECONDS = 0.4
WORKFLOWS = 4


class WorkerProcess:
    """A ``stent worker cli_workflows`` subprocess with its stderr in a file."""

    def __init__(self, db_args: list[str], worker_id: str, tmp_path: Path, journal: Path,
                 *extra: str) -> None:
        self.log_path = tmp_path / f"{worker_id}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stent.cli", "worker", "cli_workflows", *db_args,
             "--worker-id", worker_id, "--poll-interval", "0.05", "--lease", "10", *extra],
            cwd=HERE, stdout=self._log, stderr=subprocess.STDOUT,
            env=stent_env(**{wf.JOURNAL_ENV: str(journal)}),
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert self.proc.poll() is None, f"worker exited early:\n{self.log}"
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log}"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Started workers, killed at the end of the test if still running."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.kill()


def _journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _held_by(db: Database, worker_id: str, execution_ids: list[str]) -> list[str]:
    """Tasks still leased (running) by ``worker_id``."""

    async def look(backend: Backend) -> list[str]:
        held = []
        for eid in execution_ids:
            for t in await backend.list_tasks_for_execution(eid):
                if t.state == "running" and t.worker_id == worker_id:
                    held.append(t.id)
        return held

    result: list[str] = db.call(look)
    return result


def test_sigterm_drains_and_a_second_worker_finishes_everything(
    empty_db: Database, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    db = empty_db
    journal = tmp_path / "journal.jsonl"

    async def dispatch(backend: Backend) -> list[str]:
        ex = Stent(backend)
        try:
            return [await ex.dispatch(wf.slow_workflow, k, STEPS, STEP_SECONDS,
                                      execution_id=f"slow-{k}") for k in range(WORKFLOWS)]
        finally:
            await ex.shutdown()  # closes its notification publisher before the loop ends

    ids: list[str] = db.call(dispatch)
    first = WorkerProcess(db.args, "w1", tmp_path, journal, "--concurrency", "3", "--grace", "10")
    workers.append(first)
    first.wait_for_log("worker w1 ready")
    # Mid-work: some steps have finished, and some are running right now.
    deadline = time.monotonic() + 30
    while True:
        entries = _journal(journal)
        started = {e["i"] for e in entries if e["event"] == "start"}
        ended = {e["i"] for e in entries if e["event"] == "end"}
        if len(ended) >= 2 and started - ended:
            break
        assert time.monotonic() < deadline, first.log
        time.sleep(0.02)

    assert first.stop(signal.SIGTERM) == 0, first.log
    assert "SIGTERM: draining" in first.log and "worker w1 stopped" in first.log
    assert "Traceback" not in first.log
    # Nothing left leased by the drained worker, and the steps it had started finished.
    assert _held_by(db, "w1", ids) == []
    entries = _journal(journal)
    w1_pid = first.proc.pid
    started_by_w1 = {e["i"] for e in entries if e["event"] == "start" and e["pid"] == w1_pid}
    ended_by_w1 = {e["i"] for e in entries if e["event"] == "end" and e["pid"] == w1_pid}
    assert started_by_w1 == ended_by_w1
    states = {e["id"]: e["state"] for e in db.json("list", "--limit", "100")}
    assert any(states[i] != "completed" for i in ids), "the drain came too late to prove much"

    second = WorkerProcess(db.args, "w2", tmp_path, journal, "--concurrency", "4")
    workers.append(second)
    deadline = time.monotonic() + 60
    while True:
        states = {e["id"]: e["state"] for e in db.json("list", "--limit", "100")}
        if all(states[i] == "completed" for i in ids):
            break
        assert "failed" not in states.values(), states
        assert time.monotonic() < deadline, f"{states}\n{second.log}"
        time.sleep(0.1)
    assert second.stop(signal.SIGINT) == 0, second.log
    assert _held_by(db, "w2", ids) == []

    # No task lost and none run twice: every step body ran to its end exactly once.
    for k in range(WORKFLOWS):
        result = db.json("show", f"slow-{k}")["result"]
        assert result == sum((k * 100 + j) * 10 for j in range(STEPS))
    ends = [e["i"] for e in _journal(journal) if e["event"] == "end"]
    assert sorted(ends) == sorted(k * 100 + j for k in range(WORKFLOWS) for j in range(STEPS))


def test_idle_worker_exits_0_on_sigint(
    tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    path = tmp_path / "idle.sqlite"  # created by the worker's init_db
    w = WorkerProcess(["--db", f"sqlite:///{path}"], "idle", tmp_path, tmp_path / "j.jsonl")
    workers.append(w)
    w.wait_for_log("worker idle ready")
    assert w.stop(signal.SIGINT, timeout=15) == 0, w.log
    assert path.is_file()


def test_worker_imports_a_file_path(tmp_path: Path, workers: list[WorkerProcess]) -> None:
    module = tmp_path / "my_flows.py"
    module.write_text(
        "from stent import Stent\n\n"
        "@Stent.durable(name='file.double')\n"
        "async def double(x: int) -> int:\n"
        "    return 2 * x\n"
    )
    url = f"sqlite:///{tmp_path / 'f.sqlite'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stent.cli", "worker", str(module), "--db", url],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=stent_env(),
    )
    try:
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 30
        while b"ready" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen
            seen += proc.stdout.readline()
        assert b"file.double" in seen
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_with_an_unimportable_module_exits_1(tmp_path: Path) -> None:
    proc = run_stent("worker", "no_such_module_anywhere", "--db", f"sqlite:///{tmp_path}/x.db")
    assert proc.returncode == 1
    assert "cannot import module 'no_such_module_anywhere'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_worker_with_unreachable_redis_serves_by_polling_and_hides_the_password(
    tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Redis being down never stops a worker (polling is the safety net), and its URL's
    password is never printed. Where stent-redis has no ``RedisBackend``, ``--redis`` is
    refused with exit status 1 instead."""
    w = WorkerProcess(["--db", f"sqlite:///{tmp_path}/r.db"], "redis-w", tmp_path,
                      tmp_path / "j.jsonl", "--redis", "redis://:hunter2-redis@127.0.0.1:1/0")
    workers.append(w)
    deadline = time.monotonic() + 30
    while "ready" not in w.log and w.proc.poll() is None:
        assert time.monotonic() < deadline, w.log
        time.sleep(0.05)
    if w.proc.poll() is None:
        assert w.stop(signal.SIGTERM) == 0, w.log
    else:
        assert w.proc.returncode == 1, w.log
        assert "--redis" in w.log and "not available" in w.log
    assert "hunter2-redis" not in w.log
    assert "Traceback" not in w.log


def test_worker_health_port_is_passed_through(tmp_path: Path) -> None:
    """Until the engine serves ``health_port``, the worker refuses it clearly (exit 1); once
    it does, ``/health`` answers."""
    port = 20000 + os.getpid() % 20000
    proc = subprocess.Popen(
        [sys.executable, "-m", "stent.cli", "worker", "cli_workflows", "--db",
         f"sqlite:///{tmp_path}/h.db", "--health-port", str(port)],
        cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stent_env(),
    )
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                time.sleep(0.1)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            return
        _, err = proc.communicate()
        assert proc.returncode == 1, err
        assert "--health-port" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args", [
    ["--concurrency", "0"], ["--lease", "soon"], ["--lease", "0"], ["--grace", "-1"],
    ["--queues", "bad queue!"], ["--log-level", "LOUD"],
])
def test_worker_option_errors_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    proc = run_stent("worker", "cli_workflows", "--db", f"sqlite:///{tmp_path}/x.db", *args,
                     cwd=HERE)
    assert proc.returncode == 2, proc.stderr

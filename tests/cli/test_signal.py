"""``stent signal ID NAME [PAYLOAD] [--json]`` as a subprocess, with a ``stent worker``
subprocess running a workflow that waits for the signal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stent import Stent
from stent.backend import Backend

from . import signal_workflows as wf
from .conftest import HERE, Database, stent_env


def _dispatch(db: Database, *orders: str) -> list[str]:
    async def go(backend: Backend) -> list[str]:
        ex = Stent(backend)
        try:
            return [await ex.dispatch(wf.await_approval, o, execution_id=f"approval-{o}")
                    for o in orders]
        finally:
            await ex.shutdown()

    ids: list[str] = db.call(go)
    return ids


def _tasks(db: Database, eid: str) -> list[Any]:
    async def go(backend: Backend) -> list[Any]:
        return await backend.list_tasks_for_execution(eid)

    tasks: list[Any] = db.call(go)
    return tasks


def _wait_until(what: str, check: Any, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}:\n{log.read_text(errors='replace')}"
        time.sleep(0.05)


@pytest.fixture
def worker(empty_db: Database, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A ``stent worker signal_workflows`` subprocess, with its output in a file."""
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stent.cli", "worker", "signal_workflows", *empty_db.args,
             "--worker-id", "w-signal", "--poll-interval", "0.05"],
            cwd=HERE, stdout=out, stderr=subprocess.STDOUT, env=stent_env(),
        )
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_waiting_workflow_completes_with_the_payload_the_cli_sends(
    empty_db: Database, worker: tuple[subprocess.Popen[bytes], Path]
) -> None:
    db = empty_db
    proc, log = worker
    [early, waiting] = _dispatch(db, "early", "waiting")
    # sent before anything waits (the worker may not have started it yet): kept for the wait
    sent = db.stent("signal", early, "approve", "yes")
    assert sent.returncode == 0, sent.stderr
    assert "approve" in sent.stdout and early in sent.stdout

    def signal_step_waits() -> bool:
        return any(t.step_name == "stent.signal" and t.state == "waiting"
                   for t in _tasks(db, waiting))

    _wait_until("the workflow never waited for its signal", signal_step_waits, log)
    assert db.json("show", waiting)["state"] == "running"
    sent = db.stent("signal", waiting, "approve", '{"by": "ops", "ok": true, "n": [1, 2]}',
                    "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout) == {"id": waiting, "signal": "approve", "sent": True,
                                       "state": "running"}

    def both_completed() -> bool:
        return all(db.json("show", e)["state"] == "completed" for e in (early, waiting))

    _wait_until("the workflows did not complete", both_completed, log)
    assert db.json("show", early)["result"] == {"order": "early", "decision": "yes"}
    assert db.json("show", waiting)["result"] == {
        "order": "waiting", "decision": {"by": "ops", "ok": True, "n": [1, 2]}}
    assert proc.poll() is None, log.read_text()


def test_signal_to_an_unknown_execution_exits_1(empty_db: Database) -> None:
    proc = empty_db.stent("signal", "no-such-execution", "approve", "yes")
    assert proc.returncode == 1
    assert "no execution with id 'no-such-execution'" in proc.stderr
    assert proc.stdout == ""


def test_a_bad_signal_name_is_a_usage_error_that_says_what_names_may_be(
    empty_db: Database
) -> None:
    [eid] = _dispatch(empty_db, "bad-name")
    proc = empty_db.stent("signal", eid, "not a name!", "yes")
    assert proc.returncode == 2
    assert "invalid signal name 'not a name!'" in proc.stderr
    assert "A-Z a-z 0-9 _ . : -" in proc.stderr


def test_a_payload_that_is_not_json_with_json_is_a_usage_error_and_sends_nothing(
    empty_db: Database, worker: tuple[subprocess.Popen[bytes], Path]
) -> None:
    [eid] = _dispatch(empty_db, "bad-json")
    proc = empty_db.stent("signal", eid, "approve", "{not json", "--json")
    assert proc.returncode == 2
    assert "PAYLOAD is not valid JSON" in proc.stderr
    # had anything been sent, the workflow would have consumed it first
    assert empty_db.stent("signal", eid, "approve", '"fine"', "--json").returncode == 0
    _wait_until("the workflow did not complete",
                lambda: empty_db.json("show", eid)["state"] == "completed", worker[1])
    assert empty_db.json("show", eid)["result"] == {"order": "bad-json", "decision": "fine"}


def test_signal_to_a_finished_execution_says_nothing_will_receive_it(
    empty_db: Database, worker: tuple[subprocess.Popen[bytes], Path]
) -> None:
    [eid] = _dispatch(empty_db, "done")
    assert empty_db.stent("signal", eid, "approve").returncode == 0  # payload None
    _wait_until("the workflow did not complete",
                lambda: empty_db.json("show", eid)["state"] == "completed", worker[1])
    assert empty_db.json("show", eid)["result"] == {"order": "done", "decision": None}
    proc = empty_db.stent("signal", eid, "approve", "again")
    assert proc.returncode == 0, proc.stderr
    assert "already finished (completed): nothing will receive it" in proc.stdout


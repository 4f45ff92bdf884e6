"""``stent init-db``, ``list``, ``show``, ``tasks list/show`` and ``stats`` as subprocesses, on
SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Database, run_stent


# -- init-db --------------------------------------------------------------------------------------
def test_init_db_creates_a_sqlite_database_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "new" / "stent.sqlite"
    path.parent.mkdir()
    for _ in range(2):
        proc = run_stent("init-db", "--db", f"sqlite:///{path}")
        assert proc.returncode == 0, proc.stderr
        assert "ready" in proc.stdout
    assert path.is_file()
    listed = run_stent("list", "--db", f"sqlite:///{path}", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_init_db_on_an_initialised_database_changes_nothing(empty_db: Database) -> None:
    for _ in range(2):
        proc = empty_db.stent("init-db", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["ok"] is True


def test_reading_a_missing_sqlite_file_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nothere.sqlite"
    proc = run_stent("list", "--db", f"sqlite:///{missing}")
    assert proc.returncode == 1
    assert "no SQLite database" in proc.stderr and "stent init-db" in proc.stderr
    assert not missing.exists()


def test_database_url_comes_from_the_environment(tmp_path: Path) -> None:
    from .conftest import stent_env

    path = tmp_path / "env.sqlite"
    assert run_stent("init-db", env=stent_env(DATABASE_URL=f"sqlite:///{path}")).returncode == 0
    proc = run_stent("stats", "--json", env=stent_env(STENT_DATABASE_URL=f"sqlite:///{path}",
                                                       DATABASE_URL="mysql://x@y/z"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["executions"]["total"] == 0


def test_db_option_may_come_before_the_command(seeded_db: Database) -> None:
    proc = run_stent(*seeded_db.args, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {e["id"] for e in json.loads(proc.stdout)} == set(seeded_db.ids.values())


def test_no_database_is_a_usage_error() -> None:
    proc = run_stent("list")
    assert proc.returncode == 2
    assert "--db" in proc.stderr


def test_unsupported_scheme_is_a_usage_error() -> None:
    proc = run_stent("stats", "--db", "mysql://root@db/stent")
    assert proc.returncode == 2
    assert "'mysql'" in proc.stderr


def test_schema_option_is_for_postgres_only(tmp_path: Path) -> None:
    proc = run_stent("list", "--db", f"sqlite:///{tmp_path}/x.sqlite", "--schema", "s")
    assert proc.returncode == 2
    assert "--schema" in proc.stderr


# -- list ------------------------------------------------------------------------------------------
def test_list_shows_executions_newest_first(seeded_db: Database) -> None:
    proc = seeded_db.stent("list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["ID", "FUNCTION", "STATE", "CREATED", "FINISHED"]
    ids = [line.split()[0] for line in lines[1:]]
    assert ids[0] == seeded_db.ids["parked"]  # dispatched last
    assert set(ids) == set(seeded_db.ids.values())
    row = next(line for line in lines if line.startswith(seeded_db.ids["boom"]))
    assert "cli.calls_explode" in row and " failed " in row


def test_list_json_filters_and_pages(seeded_db: Database) -> None:
    everything = seeded_db.json("list")
    assert everything[0]["id"] == seeded_db.ids["parked"]
    assert {"id", "function", "state", "created_at", "finished_at"} <= set(everything[0])
    completed = seeded_db.json("list", "--state", "completed")
    assert {e["id"] for e in completed} == {seeded_db.ids[k] for k in ("order", "declined",
                                                                      "approved")}
    assert all(e["finished_at"] for e in completed)
    page = seeded_db.json("list", "--limit", "2", "--offset", "1")
    assert [e["id"] for e in page] == [e["id"] for e in everything[1:3]]


def test_list_rejects_a_bad_state_and_a_negative_limit(seeded_db: Database) -> None:
    assert seeded_db.stent("list", "--state", "done").returncode == 2
    assert seeded_db.stent("list", "--limit", "-1").returncode == 2


# -- show -----------------------------------------------------------------------------------------
def test_show_a_completed_execution_with_repr_of_its_result(seeded_db: Database) -> None:
    proc = seeded_db.stent("show", seeded_db.ids["order"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "cli.order(5)" in out
    assert "completed" in out
    assert "'price': Decimal('9.99')" in out and "'pair': (1, 'x')" in out
    assert "dispatched" in out and "running" in out  # the progress log


def test_show_json_renders_values_json_safe(seeded_db: Database) -> None:
    data = seeded_db.json("show", seeded_db.ids["order"])
    assert data["state"] == "completed"
    assert data["result"] == {"total": 7, "at": "2025-01-02T03:04:05+00:00", "price": "9.99",
                              "pair": [1, "x"]}
    assert "Decimal('9.99')" in data["result_repr"]
    assert data["arguments"]["args"] == [5]
    assert data["error"] is None
    assert [p["event"] for p in data["progress"]][:2] == ["dispatched", "running"]
    assert data["tasks"] == {"completed": 3}


def test_show_a_returned_result_error_and_result_ok(seeded_db: Database) -> None:
    proc = seeded_db.stent("show", seeded_db.ids["declined"])
    assert proc.returncode == 0, proc.stderr
    assert "Result(ok=False, value=None, error=ValueError('no funds'))" in proc.stdout
    data = seeded_db.json("show", seeded_db.ids["declined"])
    assert data["state"] == "completed"
    assert data["result"]["ok"] is False
    assert data["result"]["error"]["type"] == "builtins.ValueError"
    assert data["result"]["error"]["message"] == "no funds"
    ok = seeded_db.json("show", seeded_db.ids["approved"])
    assert ok["result"] == {"ok": True, "value": 7, "error": None}


def test_show_a_failed_execution_with_its_error(seeded_db: Database) -> None:
    proc = seeded_db.stent("show", seeded_db.ids["boom"], "--traceback")
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeError('kaboom')" in proc.stdout
    assert "raise RuntimeError(message)" in proc.stdout  # --traceback
    data = seeded_db.json("show", seeded_db.ids["boom"])
    assert data["state"] == "failed"
    assert data["result"] is None
    assert data["error"]["type"] == "builtins.RuntimeError"
    assert data["error"]["message"] == "kaboom"
    assert "Traceback" in data["error"]["traceback"]


def test_show_an_unknown_execution_exits_1(seeded_db: Database) -> None:
    proc = seeded_db.stent("show", "no-such-execution")
    assert proc.returncode == 1
    assert "no-such-execution" in proc.stderr
    assert proc.stdout == ""


# -- tasks ------------------------------------------------------------------------------------------
def test_tasks_list_shows_steps_with_attempts_leases_and_fences(seeded_db: Database) -> None:
    eid = seeded_db.ids["order"]
    proc = seeded_db.stent("tasks", "list", eid)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["ID", "PARENT", "SEQ", "STEP", "KIND", "STATE", "ATTEMPT",
                                "RETRIES", "WORKER", "LEASE", "FENCE"]
    assert len(lines) == 4  # the root and two steps
    assert lines[1].split()[:6] == [eid, "-", "-", "cli.order", "function", "completed"]
    rows = seeded_db.json("tasks", "list", eid)
    assert [t["step_name"] for t in rows] == ["cli.order", "cli.add", "cli.add"]
    assert [t["seq"] for t in rows[1:]] == [0, 1]
    assert all(t["parent_id"] == eid for t in rows[1:])
    assert rows[0]["fence"] >= 1 and rows[0]["attempt"] == 1


def test_tasks_show_one_task(seeded_db: Database) -> None:
    rows = seeded_db.json("tasks", "list", seeded_db.ids["boom"])
    child = next(t for t in rows if t["parent_id"])
    proc = seeded_db.stent("tasks", "show", child["id"])
    assert proc.returncode == 0, proc.stderr
    assert "cli.explode('kaboom')" in proc.stdout
    assert "RuntimeError('kaboom')" in proc.stdout
    assert f"({seeded_db.ids['boom']}, attempt 1, seq 0)" in proc.stdout
    data = seeded_db.json("tasks", "show", child["id"])
    assert data["state"] == "failed" and data["kind"] == "function"
    assert data["retry_policy"]["max_attempts"] == 1
    assert data["error"]["message"] == "kaboom"
    done = seeded_db.json("tasks", "show", seeded_db.ids["approved"])
    assert done["result"] == {"ok": True, "value": 7, "error": None}


def test_tasks_of_unknown_ids_exit_1(seeded_db: Database) -> None:
    assert seeded_db.stent("tasks", "list", "nope").returncode == 1
    proc = seeded_db.stent("tasks", "show", "nope")
    assert proc.returncode == 1 and "nope" in proc.stderr
    assert seeded_db.stent("tasks").returncode == 2


# -- stats --------------------------------------------------------------------------------------------
def test_stats_counts_by_state_queue_depths_and_dead_letters(seeded_db: Database) -> None:
    data = seeded_db.json("stats")
    assert data["executions"]["completed"] == 3
    assert data["executions"]["failed"] == 1
    assert data["executions"]["pending"] == 1
    assert data["executions"]["total"] == 5
    assert data["tasks"]["failed"] == 2  # the dead-lettered step and its caller
    assert data["tasks"]["pending"] == 1
    assert data["tasks"]["total"] == sum(v for k, v in data["tasks"].items() if k != "total")
    assert {"queue": "parked", "pending": 1} in data["queues"]
    assert {"queue": None, "pending": 0} in data["queues"]
    assert data["dead_letters"] == 1
    proc = seeded_db.stent("stats", "--queue", "other")
    assert proc.returncode == 0, proc.stderr
    assert "parked" in proc.stdout and "@default" in proc.stdout and "other" in proc.stdout
    assert "DEAD LETTERS  1" in proc.stdout


def test_watch_redraws_and_stops_after_its_iterations(seeded_db: Database) -> None:
    proc = seeded_db.stent("watch", "--iterations", "2", "--interval", "0.1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("EXECUTIONS") == 2
    assert "THROUGHPUT" in proc.stdout and seeded_db.ids["parked"] in proc.stdout

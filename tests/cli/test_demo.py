"""``stent demo`` end to end, the ``stent`` entry point, and database URLs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from stent.cli import main
from stent.cli.dburl import backend_from_url, mask_url, resolve_database_url, sqlite_path_from_url
from stent.cli.errors import UnavailableError, UsageError


def _stent(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for name in ("STENT_DATABASE_URL", "DATABASE_URL"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "stent.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
    )


# -- stent demo -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_kills_a_worker_and_no_completed_step_runs_again(tmp_path: Path) -> None:
    db = tmp_path / "demo.sqlite"
    proc = _stent("demo", "--db-path", str(db), cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{proc.stderr}"

    w1 = re.search(r"worker #1 = pid (\d+)", out)
    w2 = re.search(r"worker #2 = pid (\d+)", out)
    assert w1 and w2, out
    assert w1.group(1) != w2.group(1)
    assert f"SIGKILL -> worker #1 (pid {w1.group(1)})" in out
    assert "completed steps re-run after the crash: none" in out

    # The two steps completed before the kill ran once, in worker #1; the rest in worker #2.
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\s*(\w+)\s+worker #.*$", out, re.M)}
    for step in ("reserve_inventory", "charge_payment"):
        assert re.search(rf"{step}\s+worker #1\s+1\s+1\s+completed\s+0$", rows[step]), rows[step]
    assert re.search(r"send_confirmation\s+worker #2\s+1\s+1\s+completed", rows["send_confirmation"])
    assert "worker #1 (killed), worker #2" in rows["create_shipment"]

    assert db.is_file()
    assert f"database: {db}" in out
    assert (tmp_path / "demo.steps.jsonl").is_file()
    assert not (tmp_path / ".stent").exists()  # nothing written beside the asked-for path


@pytest.mark.slow
def test_demo_replaces_an_old_demo_database(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "demo.sqlite"
    first = _stent("demo", "--db-path", str(db))
    assert first.returncode == 0, first.stderr
    second = _stent("demo", "--db-path", str(db))
    assert second.returncode == 0, second.stderr
    # only one execution: the old database was removed, not appended to
    import sqlite3

    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        execution_table = next(t for t in tables if "execution" in t)
        (count,) = conn.execute(f"SELECT count(*) FROM {execution_table}").fetchone()
    assert count == 1


def test_demo_refuses_to_replace_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("do not delete me")
    assert main(["demo", "--db-path", str(precious)]) == 1
    assert precious.read_text() == "do not delete me"


def test_demo_without_stent_postgres_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "stent_postgres", None)  # import now raises ImportError
    assert main(["demo", "--db-path", str(tmp_path / "demo.sqlite")]) == 1
    assert "stent demo needs stent-postgres: pip install stent-postgres" in capsys.readouterr().err
    assert not (tmp_path / "demo.sqlite").exists()


# -- the entry point --------------------------------------------------------------------------------
def test_help_lists_demo() -> None:
    proc = _stent("--help")
    assert proc.returncode == 0
    assert "demo" in proc.stdout


def test_unknown_command_is_a_usage_error() -> None:
    proc = _stent("no-such-command")
    assert proc.returncode == 2
    assert "no-such-command" in proc.stderr


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_bad_option_is_a_usage_error() -> None:
    assert main(["demo", "--no-such-option"]) == 2


# -- database URLs ------------------------------------------------------------------------------------
def test_sqlite_paths() -> None:
    assert sqlite_path_from_url("sqlite:///data/stent.db") == "data/stent.db"
    assert sqlite_path_from_url("sqlite:////var/lib/stent.db") == "/var/lib/stent.db"
    assert sqlite_path_from_url("sqlite:///:memory:") == ":memory:"
    assert sqlite_path_from_url("SQLITE:///my%20file.db") == "my file.db"
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///x.db?mode=ro"):
        with pytest.raises(UsageError):
            sqlite_path_from_url(bad)


def test_sqlite_url_makes_a_sqlite_backend(tmp_path: Path) -> None:
    from stent_postgres import SQLiteBackend

    backend = backend_from_url(f"sqlite:///{tmp_path}/x.db", environ={})
    assert isinstance(backend, SQLiteBackend)
    assert isinstance(backend_from_url("sqlite:///:memory:", environ={}), SQLiteBackend)


def test_memory_url_makes_an_in_memory_backend() -> None:
    from stent_testing.memory import InMemoryBackend

    assert isinstance(backend_from_url("memory://", environ={}), InMemoryBackend)
    with pytest.raises(UsageError):
        backend_from_url("memory://somewhere", environ={})


def test_postgres_urls_need_postgres_backend() -> None:
    import stent_postgres

    for url in ("postgresql://u:pw@db/stent", "postgres://u:pw@db/stent"):
        if hasattr(stent_postgres, "PostgresBackend"):
            backend = backend_from_url(url, environ={})
            assert type(backend).__name__ == "PostgresBackend"
        else:
            with pytest.raises(UnavailableError, match="pip install stent-postgres") as info:
                backend_from_url(url, environ={})
            assert "pw" not in str(info.value)


def test_precedence_flag_then_stent_env_then_database_url() -> None:
    env = {"STENT_DATABASE_URL": "memory://", "DATABASE_URL": "sqlite:///other.db"}
    assert resolve_database_url("sqlite:///flag.db", env) == ("sqlite:///flag.db", "--db")
    assert resolve_database_url(None, env) == ("memory://", "STENT_DATABASE_URL")
    assert resolve_database_url("", env) == ("memory://", "STENT_DATABASE_URL")
    assert resolve_database_url(None, {"DATABASE_URL": "memory://"}) == ("memory://", "DATABASE_URL")
    assert resolve_database_url(None, {"STENT_DATABASE_URL": "", "DATABASE_URL": "memory://"}) == (
        "memory://", "DATABASE_URL")
    with pytest.raises(UsageError, match="--db"):
        resolve_database_url(None, {})


def test_env_vars_reach_backend_from_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from stent_testing.memory import InMemoryBackend

    monkeypatch.delenv("STENT_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "memory://")
    assert isinstance(backend_from_url(None), InMemoryBackend)
    monkeypatch.setenv("STENT_DATABASE_URL", "mysql://root:hunter2@db/x")
    with pytest.raises(UsageError, match="STENT_DATABASE_URL"):
        backend_from_url(None)


@pytest.mark.parametrize("url", [
    "mysql://admin:s3cret-Pa55@db.example.com:3306/stent",
    "redis://:s3cret-Pa55@cache:6379/0",
    "postgresql+asyncpg://admin:s3cret-Pa55@db/stent",
    "mongodb://admin:s3cret@Pa55@db/stent",
])
def test_unknown_scheme_is_a_usage_error_without_the_password(url: str) -> None:
    with pytest.raises(UsageError) as info:
        backend_from_url(url, environ={})
    message = str(info.value)
    scheme = url.split("://")[0]
    assert repr(scheme) in message
    assert "s3cret" not in message and "Pa55" not in message
    assert ":***@" in message
    assert info.value.exit_code == 2


def test_no_scheme_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no scheme"):
        backend_from_url("stent.db", environ={})


def test_mask_url() -> None:
    assert mask_url("postgresql://user:secret@host/db") == "postgresql://user:***@host/db"
    assert mask_url("postgresql://user@host/db") == "postgresql://user@host/db"
    assert mask_url("postgresql://host/db?password=secret&x=1") == (
        "postgresql://host/db?password=***&x=1")
    assert mask_url("sqlite:///data/stent.db") == "sqlite:///data/stent.db"

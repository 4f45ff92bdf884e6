"""Shared fixtures of the CLI tests: run ``stent`` as a real subprocess, and databases (SQLite
files under ``tmp_path``, PostgreSQL schemas of their own) seeded by an in-process worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from stent import Stent
from stent.backend import Backend

from . import cli_workflows as wf

HERE = Path(__file__).parent


def stent_env(**extra: str) -> dict[str, str]:
    """The environment for a ``stent`` subprocess: no database variables unless given."""
    env = dict(os.environ)
    for name in ("STENT_DATABASE_URL", "DATABASE_URL", "STENT_SCHEMA", "STENT_DEBUG"):
        env.pop(name, None)
    env.update(extra)
    return env


def run_stent(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m stent.cli ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "stent.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env=env if env is not None else stent_env(),
    )


@dataclass
class Database:
    """A database for CLI tests: how to name it on the command line, and how to open it here.

    Attributes:
        kind: ``sqlite`` or ``postgres``.
        args: ``--db URL`` (and ``--schema NAME``) for ``stent``.
        open: makes a new backend on the same database, for arranging and checking.
        ids: execution ids seeded, by role.
    """

    kind: str
    args: list[str]
    open: Callable[[], Backend]
    ids: dict[str, str] = field(default_factory=dict)

    def stent(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``stent ARGS`` on this database."""
        return run_stent(*args, *self.args, **kw)

    def json(self, *args: str) -> Any:
        """Run ``stent ARGS --json`` on this database, check it succeeded, parse stdout."""
        proc = self.stent(*args, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def call(self, fn: Callable[[Backend], Any]) -> Any:
        """Run ``await fn(backend)`` on a fresh backend, closed afterwards."""

        async def go() -> Any:
            backend = self.open()
            try:
                return await fn(backend)
            finally:
                await backend.close()

        return asyncio.run(go())


class PastClock:
    """The real clock, ``shift`` behind: executions seeded with it finished long ago."""

    def __init__(self, shift: timedelta) -> None:
        self.shift = shift

    def now(self) -> datetime:
        return datetime.now(UTC) - self.shift

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


async def seed(backend: Backend, *, clock: Any = None, prefix: str = "") -> dict[str, str]:
    """Run one of each kind of execution to its end on ``backend`` with an in-process worker
    (a workflow with a dict result, a ``Result.Error``, a ``Result.Ok``, a failure with a
    dead-lettered step), then dispatch one more on queue ``parked``, which nobody serves.

    Returns:
        The execution ids by role: order, declined, approved, boom, parked.
    """
    options: dict[str, Any] = {"poll_interval": 0.05, "queues": [None]}
    if clock is not None:
        options["executor"] = {"clock": clock}
    async with Stent.bootstrap(backend, serve=True, **options) as ex:
        ids = {
            "order": await ex.dispatch(wf.order, 5, execution_id=f"{prefix}order-1"),
            "declined": await ex.dispatch(wf.declined, "no funds",
                                          execution_id=f"{prefix}declined-1"),
            "approved": await ex.dispatch(wf.approved, 7, execution_id=f"{prefix}approved-1"),
            "boom": await ex.dispatch(wf.calls_explode, "kaboom",
                                      execution_id=f"{prefix}boom-1"),
        }
        for eid in ids.values():
            await ex.wait_for(eid, expiry=30)
        ids["parked"] = await ex.dispatch(wf.add, 1, 2, queue="parked",
                                          execution_id=f"{prefix}parked-1")
    return ids


def _sqlite_database(tmp_path: Path) -> Database:
    from stent_postgres import SQLiteBackend

    path = tmp_path / "stent.sqlite"
    return Database("sqlite", ["--db", f"sqlite:///{path}"], lambda: SQLiteBackend(str(path)))


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty, initialised database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        db = _sqlite_database(tmp_path)
        db.call(lambda b: b.init_db())
        yield db
        return
    from stent_postgres import PostgresBackend
    from stent_testing.pg import create_test_backend, dispose_test_backend, postgres_test_dsn

    async def create() -> Any:
        backend = await create_test_backend()
        await backend.close()  # its pool belongs to this event loop; disposing reopens none
        return backend

    holder = asyncio.run(create())
    schema = holder.schema
    dsn = postgres_test_dsn()
    try:
        yield Database("postgres", ["--db", dsn, "--schema", schema],
                       lambda: PostgresBackend(dsn, schema=schema, min_pool_size=1))
    finally:
        asyncio.run(dispose_test_backend(holder))


@pytest.fixture
def seeded_db(empty_db: Database) -> Database:
    """:func:`empty_db` holding the executions of :func:`seed`."""
    empty_db.ids = empty_db.call(seed)
    return empty_db

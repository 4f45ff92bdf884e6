"""SQLiteBackend behaviour the shared conformance suite does not cover: files, WAL, schema
versions, several connections and processes, group commit, error wrapping, durability, and a
randomized comparison against the reference backend."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from stent.errors import BackendError, LeaseLostError, SchemaVersionError
from stent.records import ExecutionEffect, Lease, NewTask, TaskRecord
from stent_postgres import SQLiteBackend
from stent_postgres._sqlite_ops import Q
from stent_postgres.migrations import load_migrations, split_sqlite_statements
from stent_testing.conformance.builders import T0, at, claim_filter, new_execution, new_task
from stent_testing.memory import InMemoryBackend

NEWEST = load_migrations("sqlite")[-1].version


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    b = SQLiteBackend(tmp_path / "stent.db")
    await b.init_db()
    yield b
    await b.close()


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, to look at the file from outside the backend."""
    return sqlite3.connect(path, isolation_level=None)


async def started(b: SQLiteBackend, **fields: Any) -> tuple[str, int]:
    """Dispatch and claim an execution; returns (root task id, fence)."""
    new = new_execution(**fields)
    await b.create_execution(new, T0)
    [root] = await b.claim("w", claim_filter(), 1, T0, at(60))
    assert root.id == new.root.id
    return root.id, root.fence


# -- files, WAL, :memory: ---------------------------------------------------------------------
async def test_file_database_uses_wal(backend: SQLiteBackend, tmp_path: Path) -> None:
    assert raw(tmp_path / "stent.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_memory_database_works_and_is_private() -> None:
    a, b = SQLiteBackend(":memory:"), SQLiteBackend(":memory:")
    await a.init_db()
    await b.init_db()
    new = new_execution()
    assert await a.create_execution(new, T0) == (new.id, True)
    assert (await a.get_execution(new.id)) is not None
    assert await b.get_execution(new.id) is None
    await a.close()
    await b.close()


async def test_data_survives_closing_and_reopening(tmp_path: Path) -> None:
    first = SQLiteBackend(tmp_path / "d.db")
    await first.init_db()
    root_id, fence = await started(first)
    await first.complete_task(root_id, fence, b"done", at(1))
    before = await first.get_task(root_id)
    await first.close()

    second = SQLiteBackend(tmp_path / "d.db")
    await second.init_db()
    assert await second.get_task(root_id) == before
    await second.close()


async def test_backend_reopens_after_close(backend: SQLiteBackend) -> None:
    new = new_execution()
    await backend.create_execution(new, T0)
    await backend.close()
    assert (await backend.get_execution(new.id)) is not None


async def test_operation_before_init_db_says_to_call_it(tmp_path: Path) -> None:
    b = SQLiteBackend(tmp_path / "fresh.db")
    with pytest.raises(BackendError, match=r"call init_db\(\) first"):
        await b.get_task("x")
    with pytest.raises(BackendError, match=r"call init_db\(\) first"):
        await b.create_execution(new_execution(), T0)
    await b.close()


# -- schema versions and migrations ------------------------------------------------------------
async def test_init_db_twice_is_a_no_op(backend: SQLiteBackend, tmp_path: Path) -> None:
    new = new_execution()
    await backend.create_execution(new, T0)
    await backend.init_db()
    versions = raw(tmp_path / "stent.db").execute("SELECT version FROM stent_schema_version")
    assert [v for (v,) in versions] == list(range(1, NEWEST + 1))
    assert (await backend.get_execution(new.id)) is not None


async def test_concurrent_init_db_on_one_file_all_succeed(tmp_path: Path) -> None:
    backends = [SQLiteBackend(tmp_path / "c.db") for _ in range(6)]
    await asyncio.gather(*(b.init_db() for b in backends))
    versions = raw(tmp_path / "c.db").execute("SELECT count(*) FROM stent_schema_version")
    assert versions.fetchone()[0] == NEWEST
    for b in backends:
        await b.close()


CHILD = """
import asyncio, sys
from stent_postgres import SQLiteBackend
print("ready", flush=True)
sys.stdin.readline()  # the start signal: every process begins init_db together
async def main():
    b = SQLiteBackend(sys.argv[1])
    await b.init_db()
    await b.close()
asyncio.run(main())
"""


async def test_init_db_from_several_processes_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, path], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        here = SQLiteBackend(path)
        await here.init_db()
        for child in children:
            _, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert raw(Path(path)).execute("SELECT count(*) FROM stent_schema_version").fetchone()[0] \
        == NEWEST
    await here.create_execution(new_execution(), T0)
    await here.close()


async def test_newer_schema_version_is_refused(backend: SQLiteBackend, tmp_path: Path) -> None:
    raw(tmp_path / "stent.db").execute(
        "INSERT INTO stent_schema_version (version, applied_at) VALUES (7, 0)"
    )
    newer = SQLiteBackend(tmp_path / "stent.db")
    with pytest.raises(SchemaVersionError) as caught:
        await newer.init_db()
    assert str(caught.value) == (
        f"database schema version 7 is newer than this stent-postgres supports ({NEWEST}); "
        "upgrade stent-postgres"
    )
    await newer.close()


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    migrations = load_migrations("sqlite")
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "0001_initial.sql"


def test_script_splitting_keeps_semicolons_inside_strings_and_triggers() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE a (x TEXT DEFAULT ';');
    CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET x = 'y;'; END;
    """
    statements = split_sqlite_statements(script)
    assert len(statements) == 2
    assert statements[1].endswith("END;")


def test_claim_uses_the_partial_indexes(tmp_path: Path) -> None:
    db = raw(tmp_path / "plan.db")
    for migration in load_migrations("sqlite"):
        for statement in split_sqlite_statements(migration.sql):
            db.execute(statement)
    params = {"now": 0.0, "names": "[]", "queues": None, "default_queue": 0, "tags": None}
    plan = [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + Q["claim_candidates"], params)]
    assert "MERGE (UNION ALL)" in plan  # read lazily: no sort of every pending task
    assert "SCAN t USING INDEX stent_tasks_pending" in plan
    assert "SEARCH t USING INDEX stent_tasks_leased (lease_expires_at<?)" in plan


# -- group commit -------------------------------------------------------------------------------
async def test_concurrent_writes_share_commits(backend: SQLiteBackend) -> None:
    before = dict(backend.stats)
    news = [new_execution() for _ in range(50)]
    results = await asyncio.gather(*(backend.create_execution(n, T0) for n in news))
    assert results == [(n.id, True) for n in news]
    assert backend.stats["operations"] - before["operations"] == 50
    assert backend.stats["commits"] - before["commits"] <= 5
    assert await backend.count_executions() == 50


async def test_failing_operation_is_rolled_back_alone(backend: SQLiteBackend) -> None:
    root_id, fence = await started(backend)
    taken = new_execution()
    await backend.create_execution(taken, T0)
    good = [new_execution() for _ in range(5)]
    # Same root task id as ``taken``: the execution row goes in, then the task insert fails.
    clash = new_execution(root_id=taken.root.id)
    stale = new_task(parent_id=root_id, seq=0)
    batches = backend.stats["batches"]

    results = await asyncio.gather(
        *(backend.create_execution(n, T0) for n in good[:3]),
        backend.create_execution(clash, T0),
        backend.create_step(root_id, fence + 1, stale, T0),
        *(backend.create_execution(n, T0) for n in good[3:]),
        return_exceptions=True,
    )

    assert backend.stats["batches"] == batches + 1  # all in one transaction
    assert results[:3] + results[5:] == [(n.id, True) for n in good]
    assert isinstance(results[3], BackendError)
    assert isinstance(results[3].__cause__, sqlite3.IntegrityError)
    assert isinstance(results[4], LeaseLostError)
    assert await backend.get_execution(clash.id) is None  # its half-write was rolled back
    assert await backend.get_task(stale.id) is None
    for n in good:
        assert (await backend.get_execution(n.id)) is not None


async def test_caller_cancelled_before_its_batch_is_never_run(backend: SQLiteBackend) -> None:
    kept, dropped = new_execution(), new_execution()
    first = asyncio.create_task(backend.create_execution(kept, T0))
    second = asyncio.create_task(backend.create_execution(dropped, T0))
    await asyncio.sleep(0)  # both queued; the flusher has not started yet
    second.cancel()
    assert await first == (kept.id, True)
    with pytest.raises(asyncio.CancelledError):
        await second
    assert await backend.get_execution(dropped.id) is None


async def test_caller_cancelled_during_its_batch_leaves_a_whole_transaction(
    backend: SQLiteBackend,
) -> None:
    new = new_execution()
    batches = backend.stats["batches"]
    call = asyncio.create_task(backend.create_execution(new, T0))
    while backend.stats["batches"] == batches:  # until the batch is on the thread
        await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    ex = await backend.get_execution(new.id)
    assert ex is not None and ex.root_task_id == new.root.id
    assert (await backend.get_task(new.root.id)) is not None
    later = new_execution()
    assert await backend.create_execution(later, T0) == (later.id, True)


async def test_lock_held_past_busy_timeout_is_a_backend_error(tmp_path: Path) -> None:
    b = SQLiteBackend(tmp_path / "l.db", busy_timeout=0.05)
    await b.init_db()
    other = raw(tmp_path / "l.db")
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BackendError, match="locked") as caught:
            await b.create_execution(new_execution(), T0)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    finally:
        other.execute("ROLLBACK")
    new = new_execution()
    assert await b.create_execution(new, T0) == (new.id, True)
    await b.close()


async def test_aiosqlite_internals_we_rely_on_are_still_there(tmp_path: Path) -> None:
    # _sqlite_db runs whole batches on aiosqlite's thread through Connection._execute, and
    # makes that thread a daemon so that a backend never closed cannot block exit.
    conn = aiosqlite.connect(tmp_path / "x.db")
    assert not conn._thread.is_alive()
    conn._thread.daemon = True
    await conn
    assert await conn._execute(lambda: 42) == 42  # type: ignore[no-untyped-call]
    await conn.close()


NEVER_CLOSED = """
import asyncio, sys
from stent_postgres import SQLiteBackend
backend = SQLiteBackend(sys.argv[1])  # kept until exit, like one given to Stent.use
asyncio.run(backend.init_db())
"""


def test_process_exits_with_a_backend_never_closed(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", NEVER_CLOSED, str(tmp_path / "n.db")],
                          timeout=60, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- times -------------------------------------------------------------------------------------
async def test_times_come_back_aware_utc(backend: SQLiteBackend) -> None:
    root_id, _ = await started(backend)
    task = await backend.get_task(root_id)
    assert task is not None
    for moment in (task.created_at, task.due_at, task.started_at, task.lease_expires_at):
        assert moment is not None and moment.tzinfo is UTC
    assert (task.created_at, task.lease_expires_at) == (T0, at(60))


@pytest.fixture
def far_local_zone() -> Iterator[None]:
    """Local time at UTC+05:45, so that reading naive times as UTC would show."""
    if not hasattr(time, "tzset"):  # Windows: the zone stays as it is
        yield
        return
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-05:45"
    time.tzset()
    yield
    if previous is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = previous
    time.tzset()


async def test_naive_cutoff_is_local_time(backend: SQLiteBackend, far_local_zone: None) -> None:
    root_id, fence = await started(backend)
    await backend.complete_task(root_id, fence, b"", T0)
    just_after = (T0 + timedelta(seconds=1)).astimezone().replace(tzinfo=None)
    just_before = (T0 - timedelta(seconds=1)).astimezone().replace(tzinfo=None)
    assert await backend.cleanup_executions(just_before) == 0
    assert await backend.cleanup_executions(just_after) == 1


async def test_progress_log_keeps_the_last_hundred_entries(backend: SQLiteBackend) -> None:
    root_id, fence = await started(backend)
    for i in range(120):
        assert await backend.retry_task(root_id, fence, b"e", at(i), at(i))
        [task] = await backend.claim("w", claim_filter(), 1, at(i), at(i + 60))
        fence = task.fence
    ex = await backend.get_execution((await backend.get_task(root_id)).execution_id)  # type: ignore[union-attr]
    assert ex is not None and len(ex.progress) == 100
    assert ex.progress[-1] == {"event": "retrying", "at": at(119).isoformat(),
                               "task_id": root_id, "step": "app:work", "attempt": 121}


# -- schema version 2: signals, cache, effects, batch steps, maintenance leases ----------------
V1_ROWS = """
INSERT INTO stent_executions (id, function, state, root_task_id, args, created_at, progress,
                              counters, custom_state)
VALUES ('e1', 'app:work', 'running', 't1', X'5B5D', 100.5, '[{"event":"dispatched"}]',
        '{"n":3}', '{"s":"x"}');
INSERT INTO stent_tasks (id, execution_id, parent_id, parent_attempt, seq, step_name, kind,
                         state, args, arg_digest, due_at, created_at, fence)
VALUES ('t1', 'e1', NULL, 1, 0, 'app:work', 'function', 'running', X'5B5D', 'd', 100.5,
        100.5, 1);
INSERT INTO stent_tasks (id, execution_id, parent_id, parent_attempt, seq, step_name, kind,
                         state, args, arg_digest, due_at, created_at, finished_at, result)
VALUES ('t2', 'e1', 't1', 1, 0, 'stent.sleep', 'sleep', 'completed', X'5B5D', 'd', 100.5,
        100.5, 101.0, X'00');
INSERT INTO stent_dead_letters (task_id, execution_id, step_name, reason, created_at, retries)
VALUES ('t9', 'e1', 'app:work', 'poison', 100.5, 2);
"""


async def test_version_1_database_migrates_with_its_rows_intact(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = raw(path)
    [first] = [m for m in load_migrations("sqlite") if m.version == 1]
    db.execute("CREATE TABLE stent_schema_version ("
               "version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    for statement in split_sqlite_statements(first.sql):
        db.execute(statement)
    db.execute("INSERT INTO stent_schema_version VALUES (1, 0)")
    for statement in split_sqlite_statements(V1_ROWS):
        db.execute(statement)
    before = {table: db.execute(f"SELECT * FROM {table} ORDER BY ordinal").fetchall()
              for table in ("stent_executions", "stent_tasks", "stent_dead_letters")}
    db.close()

    b = SQLiteBackend(path)
    await b.init_db()
    db = raw(path)
    versions = [r[0] for r in db.execute("SELECT version FROM stent_schema_version")]
    assert versions == list(range(1, NEWEST + 1)) and NEWEST >= 2
    for table, rows in before.items():
        # the old columns keep their values; new ones (trace_context) are NULL
        after = db.execute(f"SELECT * FROM {table} ORDER BY ordinal").fetchall()
        assert [r[:len(rows[0])] for r in after] == rows
    ex = await b.get_execution("e1")
    assert ex is not None and ex.counters == {"n": 3} and ex.custom_state == {"s": "x"}
    t1, t2 = await b.get_task("t1"), await b.get_task("t2")
    assert t1 is not None and t1.trace_context is None and t1.fence == 1
    assert t2 is not None and t2.result == b"\x00" and t2.finished_at == utc_at(101.0)
    assert [d.task_id for d in await b.list_dead_letters()] == ["t9"]

    # the new operations work on the migrated file
    assert await b.send_signal("e1", "go", b"p", T0) == ""
    wait = new_task(parent_id="t1", seq=1, kind="signal", state="waiting")
    task, created = await b.create_signal_wait("t1", 1, wait, "go", T0)
    assert created and task.state == "completed" and task.result == b"p"
    assert (await b.cache_claim("k", "t1", "d", None, T0)).status == "owner"
    assert await b.complete_task("t1", 1, b"r", T0)
    assert (await b.cache_claim("k", "t3", "d", None, T0)).result == b"r"
    assert await b.acquire_maintenance("cleanup", "w", at(60), T0)
    await b.close()
    # reopening a migrated file migrates nothing
    again = SQLiteBackend(path)
    await again.init_db()
    assert raw(path).execute("SELECT count(*) FROM stent_schema_version").fetchone()[0] == NEWEST
    await again.close()


def utc_at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def test_create_steps_is_one_operation_in_input_order(backend: SQLiteBackend) -> None:
    root_id, fence = await started(backend)
    [(taken, _)] = await backend.create_steps(
        root_id, fence, [new_task(parent_id=root_id, seq=1)], T0)
    news = [
        new_task(parent_id=root_id, seq=3, trace_context="00-abc-def-01"),
        new_task(parent_id=root_id, seq=1),  # taken by the earlier call
        new_task(parent_id=root_id, seq=2, kind="value", state="completed", result=b"v"),
        new_task(parent_id=root_id, seq=3),  # twice in one batch: the first one wins
    ]
    ops = backend.stats["operations"]
    out = await backend.create_steps(root_id, fence, news, at(1))
    assert backend.stats["operations"] == ops + 1
    assert [(t.id, created) for t, created in out] == [
        (news[0].id, True), (taken.id, False), (news[2].id, True), (news[0].id, False)]
    assert out[0][0].trace_context == "00-abc-def-01"
    assert out[0][0].created_at == at(1) and out[0][0].started_at is None
    assert out[2][0].state == "completed" and out[2][0].started_at == at(1)
    steps = await backend.load_steps(root_id, 1)
    assert [s.seq for s in steps] == [1, 2, 3]
    task = await backend.get_task(news[0].id)
    assert task is not None and task.trace_context == "00-abc-def-01"


async def test_create_steps_fenced_out_writes_nothing(backend: SQLiteBackend) -> None:
    root_id, fence = await started(backend)
    news = [new_task(parent_id=root_id, seq=i) for i in range(3)]
    with pytest.raises(LeaseLostError):
        await backend.create_steps(root_id, fence + 1, news, T0)
    with pytest.raises(LeaseLostError):
        await backend.create_steps(root_id, fence + 1, [], T0)
    assert await backend.load_steps(root_id, 1) == []
    assert await backend.create_steps(root_id, fence, [], T0) == []


async def test_create_steps_writes_dead_letters_and_retry_progress(
    backend: SQLiteBackend,
) -> None:
    root_id, fence = await started(backend)
    failed = dataclasses.replace(new_task(parent_id=root_id, seq=0), state="failed",
                                 error=b"e", dead_letter_reason="poison", retries=2)
    retrying = dataclasses.replace(new_task(parent_id=root_id, seq=1), retries=1, attempt=2)
    await backend.create_steps(root_id, fence, [failed, retrying], T0)
    [dead] = await backend.list_dead_letters()
    assert (dead.task_id, dead.reason, dead.retries) == (failed.id, "poison", 2)
    task = await backend.get_task(root_id)
    ex = await backend.get_execution(task.execution_id)  # type: ignore[union-attr]
    assert ex is not None and ex.progress[-1]["event"] == "retrying"
    assert ex.progress[-1]["task_id"] == retrying.id


async def test_new_queries_use_their_indexes(tmp_path: Path) -> None:
    db = raw(tmp_path / "plan.db")
    for migration in load_migrations("sqlite"):
        for statement in split_sqlite_statements(migration.sql):
            db.execute(statement)

    def plan(query: str, **params: object) -> str:
        return " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + Q[query], params))

    # complete_task's extra statement on the hot path: one index probe
    assert "USING INDEX stent_cache_task (task_id=?)" in plan(
        "store_cached_result", id="t", result=b"", now_us=0)
    assert "USING INDEX stent_signals_unconsumed" in plan(
        "oldest_signal", execution_id="e", name="n")
    assert "USING INDEX stent_signal_waiters_queue" in plan(
        "oldest_signal_waiter", execution_id="e", name="n")
    assert "stent_cache_expires" in plan("cleanup_cache", now=0.0, limit=5)


async def test_cached_result_expires_exactly_at_completion_plus_ttl(
    backend: SQLiteBackend,
) -> None:
    # the stored expiry is the double of now + timedelta(seconds=ttl), to the microsecond
    for i, ttl in enumerate((0.1, 1.0, 7.3, 86400.000001, 3e7)):
        root_id, fence = await started(backend)
        assert (await backend.cache_claim(f"k{i}", root_id, "d", ttl, at(i))).status == "owner"
        done = at(i) + timedelta(microseconds=i * 7919)
        assert await backend.complete_task(root_id, fence, b"r", done)
        expiry = done + timedelta(seconds=ttl)
        before = expiry - timedelta(microseconds=1)
        assert (await backend.cache_claim(f"k{i}", "x", "d", None, before)).status == "hit"
        assert (await backend.cache_claim(f"k{i}", "x", "d", None, expiry)).status == "owner"


async def test_cleanup_removes_signals_waiters_and_unfinished_cache_entries(
    backend: SQLiteBackend, tmp_path: Path,
) -> None:
    root_id, fence = await started(backend)
    execution_id = (await backend.get_task(root_id)).execution_id  # type: ignore[union-attr]
    await backend.send_signal(execution_id, "kept", b"1", T0)
    await backend.create_signal_wait(
        root_id, fence, new_task(parent_id=root_id, seq=0, kind="signal", state="waiting"),
        "w", T0)
    step, _ = await backend.create_step(root_id, fence, new_task(parent_id=root_id, seq=1), T0)
    await backend.cache_claim("unfinished", step.id, "d", None, T0)
    await backend.cache_claim("stored", root_id, "d", None, T0)
    await backend.complete_task(root_id, fence, b"r", T0)
    db = raw(tmp_path / "stent.db")

    def count(table: str) -> int:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    assert [count(t) for t in ("stent_signals", "stent_signal_waiters", "stent_cache")] == [1, 1, 2]
    assert await backend.cleanup_executions(at(1)) == 1
    assert [count(t) for t in ("stent_signals", "stent_signal_waiters", "stent_cache")] == [0, 0, 1]
    assert db.execute("SELECT key FROM stent_cache").fetchone()[0] == "stored"


async def test_cleanup_limits_take_the_oldest_first(backend: SQLiteBackend) -> None:
    ids = []
    for i in (3, 1, 2):
        root_id, fence = await started(backend)
        await backend.complete_task(root_id, fence, b"", at(i))
        ids.append((await backend.get_task(root_id)).execution_id)  # type: ignore[union-attr]
    assert await backend.cleanup_executions(at(10), limit=0) == 0
    assert await backend.cleanup_executions(at(10), limit=2) == 2
    assert [e.id for e in await backend.list_executions()] == [ids[0]]
    assert await backend.cleanup_executions(at(10), limit=None) == 1


async def test_record_effect_quotes_names_and_refuses_unaddressable_ones(
    backend: SQLiteBackend,
) -> None:
    root_id, fence = await started(backend)
    execution_id = (await backend.get_task(root_id)).execution_id  # type: ignore[union-attr]

    def value(seq: int) -> NewTask:
        return new_task(parent_id=root_id, seq=seq, kind="value", state="completed", result=b"")

    await backend.record_effect(root_id, fence, value(0), ExecutionEffect(
        "increment", "a.b:c-d_e", delta=2), T0)
    await backend.record_effect(root_id, fence, value(1), ExecutionEffect(
        "increment", "a.b:c-d_e", delta=3), T0)
    await backend.record_effect(root_id, fence, value(2), ExecutionEffect(
        "set_state", "$[0]", value_json='{"x": [1, null]}'), T0)
    for bad in ('q"uote', "back\\slash", ""):
        with pytest.raises(ValueError):
            await backend.record_effect(root_id, fence, value(3), ExecutionEffect(
                "increment", bad, delta=1), T0)
    with pytest.raises(ValueError):
        await backend.record_effect(root_id, fence, value(3), ExecutionEffect(
            "set_state", "s", value_json="{nope"), T0)
    with pytest.raises(ValueError):
        await backend.record_effect(root_id, fence, value(3), ExecutionEffect("other", "s"), T0)
    assert await backend.get_task(value(3).id) is None
    assert [s.seq for s in await backend.load_steps(root_id, 1)] == [0, 1, 2]
    ex = await backend.get_execution(execution_id)
    assert ex is not None
    assert ex.counters == {"a.b:c-d_e": 5}
    assert ex.custom_state == {"$[0]": {"x": [1, None]}}


async def test_maintenance_lease_is_shared_between_backends_on_one_file(
    tmp_path: Path,
) -> None:
    a, b = SQLiteBackend(tmp_path / "m.db"), SQLiteBackend(tmp_path / "m.db")
    await a.init_db()
    await b.init_db()
    assert await a.acquire_maintenance("cleanup", "a", at(10), T0)
    assert not await b.acquire_maintenance("cleanup", "b", at(20), at(5))
    assert await b.acquire_maintenance("other", "b", at(20), at(5))
    assert await a.acquire_maintenance("cleanup", "a", at(30), at(5))  # renewal
    assert not await b.acquire_maintenance("cleanup", "b", at(40), at(30))  # not yet expired
    assert await b.acquire_maintenance("cleanup", "b", at(40), at(31))
    assert not await a.acquire_maintenance("cleanup", "a", at(50), at(32))
    await a.close()
    await b.close()


# -- randomized comparison with the reference backend -----------------------------------------
async def _compare_state(mem: InMemoryBackend, sql: SQLiteBackend) -> None:
    executions = await mem.list_executions(limit=10_000)
    assert await sql.list_executions(limit=10_000) == executions
    for ex in executions:
        assert await sql.list_tasks_for_execution(ex.id) == \
            await mem.list_tasks_for_execution(ex.id)
    assert await sql.list_dead_letters(10_000) == await mem.list_dead_letters(10_000)
    for queue in (None, "q1"):
        assert await sql.queue_depth(queue) == await mem.queue_depth(queue)
    for state in (None, "pending", "running", "waiting", "completed", "failed"):
        assert await sql.count_tasks(state=state) == await mem.count_tasks(state=state)
        assert await sql.count_executions(state) == await mem.count_executions(state)


def _random_operation(
    rng: random.Random, now: datetime, tasks: list[TaskRecord], dead: list[str]
) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """One random backend call as (method name, args, kwargs), biased towards calls that
    succeed: mostly on running tasks with their current fence, and on dead letters."""
    task_ids = [t.id for t in tasks]
    running = [t for t in tasks if t.state == "running"]
    held = rng.choice(running) if running and rng.random() < 0.8 else (
        rng.choice(tasks) if tasks else None)
    pick = held.id if held is not None else "none"
    fence = held.fence if held is not None and rng.random() < 0.85 else rng.randint(0, 3)
    queue = rng.choice([None, "q1"])
    tags = rng.choice([(), ("a",), ("b",), ("a", "b")])
    op = rng.choice(["dispatch", "claim", "claim", "step", "step", "step", "complete",
                     "complete", "fail", "retry", "release", "suspend", "renew", "update",
                     "replay", "replay", "discard", "cleanup", "cleanup_dl", "outcomes",
                     "load", "steps", "wait", "wait", "signal", "signal", "effect", "cache",
                     "cache", "cleanup_cache", "maintenance"])
    attempt = held.attempt if held is not None else 1
    if op == "steps":
        news = [new_task(parent_id=pick, parent_attempt=rng.choice([attempt, attempt, 2]),
                         seq=rng.randint(0, 5), kind=rng.choice(["function", "sleep"]),
                         queue=queue, tags=tags, due_at=now,
                         trace_context=rng.choice([None, "00-t-s-01"]))
                for _ in range(rng.randint(0, 3))]
        return "create_steps", (pick, fence, news, now), {}
    if op == "wait":
        timeout = rng.choice([None, now + timedelta(seconds=rng.randint(0, 4))])
        wait = new_task(parent_id=pick, parent_attempt=attempt, seq=rng.randint(0, 5),
                        kind="signal", name="stent.signal",
                        state="waiting" if timeout is None else "pending",
                        due_at=timeout or now, queue=queue, tags=tags)
        return "create_signal_wait", (pick, fence, wait, rng.choice(["s1", "s2"]), now), {}
    if op == "signal":
        waiting = sorted({t.execution_id for t in tasks
                          if t.kind == "signal" and t.state in ("pending", "waiting")})
        executions = sorted({t.execution_id for t in tasks}) or ["none"]
        target = rng.choice(waiting if waiting and rng.random() < 0.7 else executions)
        target = target if rng.random() < 0.9 else "none"
        return "send_signal", (target, rng.choice(["s1", "s2"]),
                               rng.choice([b"p1", b"p2"]), now), {}
    if op == "effect":
        effect = rng.choice([
            ExecutionEffect("increment", rng.choice(["c", "c.d"]), delta=rng.randint(-2, 5)),
            ExecutionEffect("set_state", rng.choice(["s", "s:t"]),
                            value_json=rng.choice(['1', '"x"', '{"a": [1, null]}'])),
        ])
        value = new_task(parent_id=pick, parent_attempt=attempt, seq=rng.randint(0, 5),
                         kind="value", state="completed", result=b"v")
        return "record_effect", (pick, fence, value, effect, now), {}
    if op == "cache":
        owner = pick if rng.random() < 0.8 else "gone"
        return "cache_claim", (rng.choice(["k1", "k2"]), owner, rng.choice(["d1", "d1", "d2"]),
                               rng.choice([None, 1.0, 3.5]), now), {}
    if op == "cleanup_cache":
        return "cleanup_cache", (now, rng.randint(0, 2)), {}
    if op == "maintenance":
        return "acquire_maintenance", ("m", rng.choice(["h1", "h2"]),
                                       now + timedelta(seconds=rng.randint(0, 5)), now), {}
    if op == "cleanup":
        return "cleanup_executions", (now - timedelta(seconds=rng.randint(0, 20)),), {
            "limit": rng.choice([None, None, 0, 1, 2])}
    if op == "cleanup_dl":
        return "cleanup_dead_letters", (now - timedelta(seconds=rng.randint(0, 20)),), {
            "limit": rng.choice([None, None, 0, 1, 2])}
    if op == "dispatch":
        key = rng.choice([None, None, "k1", "k2"])
        new = new_execution(queue=queue, tags=tags, priority=rng.randint(0, 2),
                            idempotency_key=key, due_at=now + timedelta(seconds=rng.randint(-2, 3)),
                            max_concurrent=rng.choice([None, None, 1, 2]))
        return "create_execution", (new, now), {}
    if op == "claim":
        flt = claim_filter(queues=rng.choice([None, [None], ["q1"], [None, "q1"]]),
                           tags=rng.choice([None, ["a"], ["b"]]))
        return "claim", (rng.choice(["w1", "w2"]), flt, rng.randint(1, 3), now,
                         now + timedelta(seconds=rng.randint(1, 8))), {}
    if op == "step":
        kind = rng.choice(["function", "function", "sleep", "value"])
        step = new_task(parent_id=pick, parent_attempt=rng.choice([attempt, attempt, 2]),
                        seq=rng.randint(0, 3), kind=kind, queue=queue, tags=tags, due_at=now,
                        state="completed" if kind == "value" else "pending",
                        result=b"v" if kind == "value" else None,
                        max_concurrent=rng.choice([None, None, 1]))
        lease = rng.choice([None, Lease("w1", now + timedelta(seconds=5))])
        return "create_step", (pick, fence, step, now, lease), {}
    if op in ("replay", "discard") and dead and rng.random() < 0.8:
        pick = rng.choice(dead)
    if op == "replay":
        return "replay_dead_letter", (pick,), {
            "queue": queue, "reset_retries": rng.random() < 0.5, "now": now,
            "set_queue": rng.random() < 0.5}
    if op == "update":
        return "update", (pick, rng.choice(["pending", "running", "completed"])), {}
    table: dict[str, tuple[str, tuple[Any, ...]]] = {
        "complete": ("complete_task", (pick, fence, b"r", now)),
        "fail": ("fail_task", (pick, fence, b"e", now, rng.choice([None, "exhausted"]))),
        "retry": ("retry_task", (pick, fence, b"e", now + timedelta(seconds=1), now)),
        "release": ("release_task", (pick, fence, now)),
        "suspend": ("suspend_task", (pick, fence, rng.sample(task_ids, min(2, len(task_ids))),
                                     now)),
        "renew": ("renew_leases", ("w1", [(pick, fence)], now + timedelta(seconds=5))),
        "discard": ("discard_dead_letter", (pick,)),
        "outcomes": ("get_outcomes", (rng.sample(task_ids, min(3, len(task_ids))),)),
        "load": ("load_steps", (pick, rng.randint(1, 2))),
    }
    name, args = table[op]
    return name, args, {}


async def _call(backend: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        if name == "update":
            task = await backend.get_task(args[0])
            if task is None:
                return None
            task.state = args[1]
            task.worker_id = None
            await backend.update_task(task)
            return task
        return ("ok", await getattr(backend, name)(*args, **kwargs))
    except (LeaseLostError, BackendError, ValueError) as exc:
        return ("raised", type(exc))


@pytest.mark.parametrize("seed", range(12))
async def test_random_operations_match_the_reference_backend(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    mem, sql = InMemoryBackend(), SQLiteBackend(tmp_path / "r.db")
    await sql.init_db()
    now = T0
    for step in range(300):
        tasks = [t for ex in await mem.list_executions(limit=10_000)
                 for t in await mem.list_tasks_for_execution(ex.id)]
        dead = [d.task_id for d in await mem.list_dead_letters(10_000)]
        name, args, kwargs = _random_operation(rng, now, tasks, dead)
        expected = await _call(mem, name, args, kwargs)
        got = await _call(sql, name, args, kwargs)
        assert got == expected, f"seed {seed}, step {step}: {name}{args}"
        if step % 10 == 0:
            await _compare_state(mem, sql)
        now += timedelta(seconds=rng.choice([0, 0, 1, 2, 5]))
    await _compare_state(mem, sql)
    await sql.close()

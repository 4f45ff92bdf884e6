"""SQLiteBackend behaviour the shared conformance suite does not cover: files, WAL, schema
versions, several connections and processes, group commit, error wrapping, durability, and a
randomized comparison against the reference backend."""

from __future__ import annotations

import asyncio
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
from stent.records import Lease, TaskRecord
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
                     "load"])
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
        attempt = held.attempt if held is not None else 1
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
        "cleanup": ("cleanup_executions", (now - timedelta(seconds=rng.randint(0, 20)),)),
        "cleanup_dl": ("cleanup_dead_letters", (now - timedelta(seconds=rng.randint(0, 20)),)),
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
    except (LeaseLostError, BackendError) as exc:
        return ("raised", type(exc))


@pytest.mark.parametrize("seed", range(12))
async def test_random_operations_match_the_reference_backend(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    mem, sql = InMemoryBackend(), SQLiteBackend(tmp_path / "r.db")
    await sql.init_db()
    now = T0
    for step in range(250):
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

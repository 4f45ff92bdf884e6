"""PostgresBackend's schema: migrations, concurrent init_db, versions, schema.sql, and the
claim's query plan."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from stent.errors import SchemaVersionError
from stent_postgres import PostgresBackend
from stent_postgres._pg_db import MIGRATIONS, Q, full_schema_sql
from stent_postgres.migrations import load_migrations
from stent_testing.conformance.builders import T0, at, claim_filter, new_execution
from stent_testing.pg import (
    create_test_backend,
    dispose_test_backend,
    drop_schema,
    new_schema_name,
    require_postgres,
    temporary_schema,
)

NEWEST = MIGRATIONS[-1].version


async def connect(dsn: str, schema: str) -> Any:
    """A plain asyncpg connection whose search_path is ``schema``."""
    return await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})


@pytest.fixture
async def dsn() -> str:
    return await require_postgres()


@pytest.fixture
async def backend() -> AsyncIterator[PostgresBackend]:
    b = await create_test_backend(min_pool_size=1, max_pool_size=4)
    yield b
    await dispose_test_backend(b)


# -- migrations and versions ----------------------------------------------------------------------
def test_migrations_are_numbered_from_one_without_gaps() -> None:
    migrations = load_migrations("postgres")
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "0001_initial.sql"


def test_sqlite_migrations_still_load() -> None:
    assert load_migrations("sqlite")[0].name == "0001_initial.sql"


async def test_init_db_twice_is_a_no_op(backend: PostgresBackend, dsn: str) -> None:
    new = new_execution()
    await backend.create_execution(new, T0)
    await backend.init_db()
    conn = await connect(dsn, backend.schema)
    try:
        versions = await conn.fetch("SELECT version FROM stent_schema_version ORDER BY 1")
    finally:
        await conn.close()
    assert [r["version"] for r in versions] == list(range(1, NEWEST + 1))
    assert await backend.get_execution(new.id) is not None


async def test_ten_workers_starting_at_once_on_a_fresh_schema_all_succeed(dsn: str) -> None:
    # The schema does not exist yet: the first init_db creates it, under the same lock.
    name = new_schema_name()
    backends = [PostgresBackend(dsn, schema=name, min_pool_size=1, max_pool_size=2)
                for _ in range(10)]
    try:
        results = await asyncio.gather(*(b.init_db() for b in backends),
                                       return_exceptions=True)
        assert results == [None] * 10
        conn = await connect(dsn, name)
        try:
            rows = await conn.fetch("SELECT version, count(*) AS n FROM stent_schema_version "
                                    "GROUP BY version ORDER BY version")
        finally:
            await conn.close()
        assert [(r["version"], r["n"]) for r in rows] == [(v, 1) for v in range(1, NEWEST + 1)]
        new = new_execution()
        assert await backends[3].create_execution(new, T0) == (new.id, True)
        assert await backends[7].get_execution(new.id) is not None
    finally:
        for b in backends:
            await b.close()
        await drop_schema(name, dsn)


async def test_newer_schema_version_is_refused(backend: PostgresBackend, dsn: str) -> None:
    conn = await connect(dsn, backend.schema)
    try:
        await conn.execute("INSERT INTO stent_schema_version (version) VALUES (7)")
    finally:
        await conn.close()
    newer = PostgresBackend(dsn, schema=backend.schema, min_pool_size=1)
    try:
        with pytest.raises(SchemaVersionError) as caught:
            await newer.init_db()
    finally:
        await newer.close()
    assert str(caught.value) == (
        f"database schema version 7 is newer than this stent-postgres supports ({NEWEST}); "
        "upgrade stent-postgres"
    )


# -- schema.sql is what the migrations build --------------------------------------------------------
async def _describe(conn: Any, schema: str) -> dict[str, Any]:
    """Everything about the Stent objects of ``schema`` that a migration could get wrong."""
    columns = await conn.fetch(
        """SELECT table_name, column_name, ordinal_position, data_type, udt_name,
                  is_nullable, column_default, is_identity, identity_generation
           FROM information_schema.columns
           WHERE table_schema = $1 AND table_name <> 'stent_schema_version'
           ORDER BY table_name, ordinal_position""", schema)
    indexes = await conn.fetch(
        """SELECT tablename, indexname, replace(indexdef, $1 || '.', '') AS definition
           FROM pg_indexes WHERE schemaname = $1 AND tablename <> 'stent_schema_version'
           ORDER BY indexname""", schema)
    constraints = await conn.fetch(
        """SELECT r.relname AS table_name, c.conname, c.contype::text AS contype,
                  pg_get_constraintdef(c.oid) AS definition
           FROM pg_constraint AS c
           JOIN pg_namespace AS n ON n.oid = c.connamespace
           JOIN pg_class AS r ON r.oid = c.conrelid
           WHERE n.nspname = $1 AND r.relname <> 'stent_schema_version'
           ORDER BY c.conname""", schema)
    functions = await conn.fetch(
        """SELECT p.proname, pg_get_function_arguments(p.oid) AS arguments,
                  pg_get_function_result(p.oid) AS result, p.provolatile::text AS volatility,
                  p.proparallel::text AS parallel,
                  pg_get_functiondef(p.oid) AS definition
           FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
           WHERE n.nspname = $1 ORDER BY p.proname""", schema)

    def rows(records: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in records]

    described = {"columns": rows(columns), "indexes": rows(indexes),
                 "constraints": rows(constraints), "functions": rows(functions)}
    return json.loads(json.dumps(described).replace(f'"{schema}".', "").replace(
        f"{schema}.", ""))


async def test_schema_sql_matches_the_migrations(dsn: str) -> None:
    async with temporary_schema(dsn) as migrated, temporary_schema(dsn) as full:
        conn = await connect(dsn, migrated)
        try:
            for migration in MIGRATIONS:
                await conn.execute(migration.sql)
            from_migrations = await _describe(conn, migrated)
        finally:
            await conn.close()
        conn = await connect(dsn, full)
        try:
            await conn.execute(full_schema_sql())
            from_schema_sql = await _describe(conn, full)
        finally:
            await conn.close()
    assert from_migrations["columns"], "the migrations created nothing"
    for part in ("columns", "indexes", "constraints", "functions"):
        assert from_schema_sql[part] == from_migrations[part], part


async def test_init_db_builds_what_schema_sql_describes(
    backend: PostgresBackend, dsn: str
) -> None:
    async with temporary_schema(dsn) as full:
        conn = await connect(dsn, full)
        try:
            await conn.execute(full_schema_sql())
            expected = await _describe(conn, full)
            actual = await _describe(conn, backend.schema)
        finally:
            await conn.close()
    assert actual == expected


# -- the claim's plan -------------------------------------------------------------------------------
def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


async def _fill(backend: PostgresBackend, pending: int, done: int) -> None:
    """``pending`` claimable tasks and ``done`` completed ones (a few running among them)."""
    for start in range(0, pending + done, 200):
        batch = [new_execution(priority=i % 3) for i in range(start, min(start + 200,
                                                                         pending + done))]
        await asyncio.gather(*(backend.create_execution(n, at(0)) for n in batch))
    claimed = []
    while len(claimed) < done:
        claimed += await backend.claim("w", claim_filter(), min(200, done - len(claimed)),
                                       at(1), at(60))
    await asyncio.gather(*(backend.complete_task(t.id, t.fence, b"1", at(2))
                           for t in claimed[:-20]))


async def _claim_plans(dsn: str, schema: str) -> list[list[dict[str, Any]]]:
    """The claim's plan nodes: as a custom plan (bound parameters) and as a generic one."""
    args = ("w", ["app:work", "app:other"], None, False, None, 10, at(5), at(65),
            '[{"event": "running"}]')
    conn = await connect(dsn, schema)
    try:
        await conn.execute("ANALYZE")
        custom = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + Q["claim"], *args))
        await conn.execute("PREPARE stent_claim AS " + Q["claim"])
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        generic = json.loads(await conn.fetchval(
            "EXPLAIN (FORMAT JSON) EXECUTE stent_claim('w', '{app:work,app:other}', NULL, "
            f"false, NULL, 10, '{at(5).isoformat()}', '{at(65).isoformat()}', "
            """'[{"event": "running"}]')"""))
    finally:
        await conn.close()
    return [_plan_nodes(custom[0]["Plan"]), _plan_nodes(generic[0]["Plan"])]


async def test_claim_uses_its_partial_indexes_and_never_scans_the_tasks_table(
    backend: PostgresBackend, dsn: str
) -> None:
    await _fill(backend, pending=600, done=2400)
    for nodes in await _claim_plans(dsn, backend.schema):
        on_tasks = [n for n in nodes if n.get("Relation Name") == "stent_tasks"]
        assert on_tasks, "the plan reads no task at all?"
        scans = {(n["Node Type"], n.get("Index Name")) for n in on_tasks}
        assert not any(kind == "Seq Scan" for kind, _ in scans), scans
        assert ("Index Scan", "stent_tasks_pending") in scans, scans
        used = {index for _, index in scans}
        assert "stent_tasks_leased" in used, scans
        # The pending scan feeds LockRows under the LIMIT: rows are locked as they are taken.
        locks = [n for n in nodes if n["Node Type"] == "LockRows"]
        assert any(_plan_nodes(lock)[1:] and any(
            c.get("Index Name") == "stent_tasks_pending" for c in _plan_nodes(lock))
            for lock in locks)


async def test_claim_still_returns_the_right_tasks_on_a_filled_table(
    backend: PostgresBackend,
) -> None:
    await _fill(backend, pending=300, done=300)
    got = await backend.claim("w-2", claim_filter(), 50, at(5), at(65))
    assert len(got) == 50
    assert [t.priority for t in got] == sorted((t.priority for t in got), reverse=True)
    assert await backend.count_tasks(state="pending") == 250


async def test_init_db_on_a_current_schema_needs_no_ddl_privilege(
    backend: PostgresBackend, dsn: str
) -> None:
    # The deployment guide calls init_db() at every worker start; the role the workers use
    # may only read and write the tables (least privilege).
    role = f"{backend.schema}_app"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD \'{role}-pw\'')
        await admin.execute(f'GRANT USAGE ON SCHEMA "{backend.schema}" TO "{role}"')
        await admin.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA '
                            f'"{backend.schema}" TO "{role}"')
        parts = urlsplit(dsn)
        host = parts.netloc.rpartition("@")[2]
        user_dsn = urlunsplit(parts._replace(netloc=f"{role}:{role}-pw@{host}"))
        limited = PostgresBackend(user_dsn, schema=backend.schema, min_pool_size=1)
        try:
            await limited.init_db()
            new = new_execution()
            assert await limited.create_execution(new, T0) == (new.id, True)
            (root,) = await limited.claim("w", claim_filter(), 1, T0, at(60))
            assert await limited.complete_task(root.id, root.fence, b"1", at(1))
        finally:
            await limited.close()
    finally:
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()

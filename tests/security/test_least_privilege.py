"""Least privilege: Stent works as a PostgreSQL role with only SELECT/INSERT/UPDATE/DELETE on
its tables (USAGE on its sequences, EXECUTE on its functions), the schema migrated by an owner
role. ``STENT_TEST_PG_ROLE=restricted`` makes ``stent_testing.pg`` hand every test such a
backend; the engine suite then runs under it in a subprocess.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from stent import Stent
from stent_testing.pg import RESTRICTED_ROLE, ROLE_ENV, create_test_backend, dispose_test_backend

from .conftest import start_worker, stop_worker
from .workflows import fails, healthy

ROOT = Path(__file__).resolve().parents[2]


async def test_restricted_backend_is_restricted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROLE_ENV, "restricted")
    backend = await create_test_backend(min_pool_size=1, max_pool_size=4)
    try:
        conn = await asyncpg.connect(backend.dsn,
                                     server_settings={"search_path": f'"{backend.schema}"'})
        try:
            assert await conn.fetchval("SELECT current_user") == RESTRICTED_ROLE
            assert not await conn.fetchval("SELECT rolsuper OR rolcreaterole OR rolcreatedb "
                                           "FROM pg_roles WHERE rolname = current_user")
            for ddl in ("CREATE TABLE stent_extra (x int)", "DROP TABLE stent_tasks",
                        "TRUNCATE stent_executions", "ALTER TABLE stent_tasks ADD COLUMN y int",
                        "CREATE INDEX ON stent_tasks (state)",
                        f'CREATE SCHEMA "{backend.schema}_x"',
                        "CREATE FUNCTION stent_f() RETURNS int LANGUAGE sql RETURN 1"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(ddl)
            tables = await conn.fetch(
                "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
                "WHERE grantee = current_user AND table_schema = $1", backend.schema)
            assert {r["privilege_type"] for r in tables} == {"SELECT", "INSERT", "UPDATE",
                                                             "DELETE"}
        finally:
            await conn.close()
        # the whole engine on it: init_db (schema current: no DDL), a worker, a success, a
        # dead letter, cleanup
        async with Stent.bootstrap(backend) as ex:
            worker = await start_worker(ex)
            try:
                ok = await ex.dispatch(healthy, 2)
                bad = await ex.dispatch(fails)
                assert (await asyncio.wait_for(ex.wait_for(ok), 30)).unwrap() == 4
                assert not (await asyncio.wait_for(ex.wait_for(bad), 60)).ok
                assert len(await ex.list_dead_letters()) == 1
                assert await ex.discard_dead_letter(bad)
            finally:
                await stop_worker(worker)
            from datetime import UTC, datetime, timedelta

            assert await backend.cleanup_executions(datetime.now(UTC) + timedelta(days=1)) == 2
    finally:
        await dispose_test_backend(backend)


# The whole engine suite runs as the restricted role on PostgreSQL: tests/engine/conftest.py
# sets it for every engine test, and tests/engine/test_least_privilege_role.py checks it.

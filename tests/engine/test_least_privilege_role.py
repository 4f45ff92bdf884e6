"""The engine suite's PostgreSQL backends really are the restricted role (see conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest
from stent.backend import Backend
from stent_testing.pg import RESTRICTED_ROLE


async def test_engine_tests_on_postgres_connect_as_the_restricted_role(
    stent_backend: Backend, stent_backend_kind: str
) -> None:
    if stent_backend_kind != "postgres":
        assert stent_backend_kind in ("memory", "sqlite")
        return  # the role only exists on PostgreSQL
    import asyncpg

    backend: Any = stent_backend
    conn = await asyncpg.connect(backend.dsn, server_settings={"search_path": backend.schema})
    try:
        assert await conn.fetchval("SELECT current_user") == RESTRICTED_ROLE
        with pytest.raises(asyncpg.PostgresError, match=r"permission denied|must be owner"):
            await conn.execute("CREATE TABLE stent_should_not_exist (x int)")
    finally:
        await conn.close()

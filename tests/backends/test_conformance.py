"""The backend conformance suite, run on every backend in this repository."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from stent.backend import Backend
from stent_testing.conformance import BackendConformance
from stent_testing.memory import InMemoryBackend


class TestInMemoryConformance(BackendConformance):
    """The reference backend."""


    @pytest.fixture
    async def backend(self) -> AsyncIterator[Backend]:
        b = InMemoryBackend()
        await b.init_db()
        yield b
        await b.close()


class TestSQLiteConformance(BackendConformance):
    """SQLite on a file (WAL)."""

    @pytest.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[Backend]:
        from stent_postgres import SQLiteBackend

        b = SQLiteBackend(tmp_path / "c.sqlite")
        await b.init_db()
        yield b
        await b.close()


class TestSQLiteInMemoryConformance(BackendConformance):
    """SQLite on ``:memory:``."""

    @pytest.fixture
    async def backend(self) -> AsyncIterator[Backend]:
        from stent_postgres import SQLiteBackend

        b = SQLiteBackend(":memory:")
        await b.init_db()
        yield b
        await b.close()


class TestPostgresConformance(BackendConformance):
    """PostgreSQL, each test on a fresh schema (skipped when the server is unreachable,
    unless CI=true)."""

    @pytest.fixture
    async def backend(self) -> AsyncIterator[Backend]:
        from stent_testing.pg import create_test_backend, dispose_test_backend

        b = await create_test_backend(min_pool_size=1, max_pool_size=4)
        yield b
        await dispose_test_backend(b)

"""The backend conformance suite, run on every backend in this repository."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from stent.backend import Backend
from stent_testing.conformance import BackendConformance
from stent_testing.memory import InMemoryBackend

# No backend enforces ``max_concurrent`` in ``claim`` yet (SPEC 2: a cluster-wide cap,
# enforced atomically; ARCHITECTURE: caps are part of the claim statement).
MAX_CONCURRENT_GAP = "claim() ignores max_concurrent"
MAX_CONCURRENT_TESTS = (
    "test_claim_respects_max_concurrent",
    "test_max_concurrent_counts_tasks_already_running",
    "test_max_concurrent_does_not_hold_back_other_functions",
)


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

    expected_failures = dict.fromkeys(MAX_CONCURRENT_TESTS, f"SQLiteBackend.{MAX_CONCURRENT_GAP}")

    @pytest.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[Backend]:
        from stent_postgres import SQLiteBackend

        b = SQLiteBackend(tmp_path / "c.sqlite")
        await b.init_db()
        yield b
        await b.close()


class TestSQLiteInMemoryConformance(BackendConformance):
    """SQLite on ``:memory:``."""

    expected_failures = dict.fromkeys(MAX_CONCURRENT_TESTS, f"SQLiteBackend.{MAX_CONCURRENT_GAP}")

    @pytest.fixture
    async def backend(self) -> AsyncIterator[Backend]:
        from stent_postgres import SQLiteBackend

        b = SQLiteBackend(":memory:")
        await b.init_db()
        yield b
        await b.close()

"""Shared fixtures: every engine test runs on the in-memory, SQLite and PostgreSQL backends."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def stent_backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)

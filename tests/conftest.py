"""Shared fixtures: every engine test runs on the in-memory and the SQLite backend."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["memory", "sqlite"])
def stent_backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)

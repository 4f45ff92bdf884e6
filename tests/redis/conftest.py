"""Fixtures of the Redis notification tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .redis_server import PrivateRedis, shared_redis_url


@pytest.fixture
def redis_url() -> str:
    """The shared test Redis (skipped, or failed under ``CI=true``, when unreachable)."""
    return shared_redis_url()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A running ``redis-server`` of this test's own, killed afterwards."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()

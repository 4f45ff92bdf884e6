"""Chaos fixtures: the testing kit's ``stent_backend`` on PostgreSQL (a schema of the test's
own) unless a test parametrizes ``stent_backend_kind``, and the run's random seed (logged,
and settable with ``CHAOS_SEED`` to replay a run's choices)."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

log = logging.getLogger("tests.chaos")


@pytest.fixture
def stent_backend_kind() -> str:
    return "postgres"


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    message = f"chaos seed for {request.node.name}: {seed} (replay with CHAOS_SEED={seed})"
    print(message)
    log.warning(message)
    return seed


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Chaos tests start worker processes of their own: run them one at a time (one xdist
    group, ``--dist loadgroup``), so that two of them never load the machine at once and
    skew the timing-sensitive tests beside them."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.xdist_group("chaos"))

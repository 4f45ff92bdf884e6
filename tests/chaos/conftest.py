"""Chaos fixtures: the testing kit's ``stent_backend`` on PostgreSQL (a schema of the test's
own) unless a test parametrizes ``stent_backend_kind``, and the run's random seed (logged,
and settable with ``CHAOS_SEED`` to replay a run's choices)."""

from __future__ import annotations

import logging
import os
import random

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

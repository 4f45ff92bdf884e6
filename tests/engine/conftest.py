"""Least privilege (issue 7): every engine test on PostgreSQL runs as ``stent_restricted``, a
role with only SELECT/INSERT/UPDATE/DELETE on Stent's tables (plus USAGE on its sequences and
EXECUTE on its functions); the schema is migrated by the owner role first. So the whole engine
suite doubles as the proof that a production worker needs no more than that."""

from __future__ import annotations

import pytest
from stent_testing.pg import ROLE_ENV


@pytest.fixture(autouse=True)
def _least_privilege(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROLE_ENV, "restricted")

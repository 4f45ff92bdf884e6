"""The kit's tests serve their own function registry (``workflows.KIT``)."""

from __future__ import annotations

from typing import Any

import pytest

from .workflows import KIT


@pytest.fixture
def stent_executor_options() -> dict[str, Any]:
    return {"function_registry": KIT}

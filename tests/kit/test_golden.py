"""Golden histories of our example workflows still replay against today's code (this is the
replay test CI runs; regenerate with ``uv run python -m tests.kit.golden_histories``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from stent_testing import load_history, replay

from .golden_histories import GOLDENS, Golden, regenerate


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda g: g.name)
def test_golden_history_replays_without_divergence(golden: Golden) -> None:
    result = replay(load_history(golden.path), golden.workflow)
    assert result.finished
    assert result.steps_replayed > 0


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda g: g.name)
def test_golden_history_replays_to_its_recorded_result(golden: Golden) -> None:
    result = replay(load_history(golden.path), golden.workflow)
    assert result.outcome_matches, (result.value, result.recorded_value)


async def test_regenerated_history_replays(tmp_path: Path) -> None:
    [path] = await regenerate(tmp_path, names=["kit_onboard_user"])
    golden = next(g for g in GOLDENS if g.name == "kit_onboard_user")
    assert replay(load_history(path), golden.workflow).outcome_matches

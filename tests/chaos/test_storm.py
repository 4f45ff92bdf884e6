"""Worker SIGKILL storms (CI size): every few seconds a random worker process is SIGKILLed
and restarted while workflows run; the oracle must find nothing lost, nothing recorded twice,
no body run twice without a lease loss and no early sleep, and every task the dead workers
held must be claimed again within lease + poll + 2 s. The full-size storm is
``scripts/chaos/storm.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .storm import StormConfig, run_storm


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("stent_backend_kind", "workers", "workflows"), [
    ("postgres", 3, 200),
    ("sqlite", 2, 300),
])
async def test_sigkill_storm_loses_nothing_and_orphans_are_taken_over_in_time(
    stent_backend: Any, tmp_path: Path, chaos_seed: int, workers: int, workflows: int
) -> None:
    cfg = StormConfig(seed=chaos_seed, workers=workers, workflows=workflows, dispatch_s=25.0)
    result = await run_storm(cfg, stent_backend, tmp_path)
    assert result["ok"], f"seed {chaos_seed}: see {tmp_path / 'result.json'}"
    assert result["kills"] >= 3

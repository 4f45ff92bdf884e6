"""A zombie worker: SIGSTOPped mid-step for longer than its lease, while another worker takes
the step over and finishes it. When it is SIGCONTed, whatever it then writes (its heartbeat,
the step's child insert, the step's completion) is fenced out: no row of any table changes,
and it logs one stale-lease warning."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from stent import Result, Stent

from . import app
from .fleet import Fleet
from .ledger import read_ledger
from .oracle import check, write_result
from .probe import open_probe

LEASE = 2.0
HOLD = 1.5  # how long the step body runs before its child call
STALE = re.compile(r"stale lease|lost its lease")


async def _until(predicate: Any, timeout: float, what: str) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("then", [
    "complete", "child",
    "heartbeat",
])
async def test_zombie_worker_changes_no_row_after_it_wakes(
    stent_backend: Any, tmp_path: Path, chaos_seed: int, then: str
) -> None:
    fleet = Fleet(stent_backend, tmp_path, lease=LEASE)
    probe = await open_probe(stent_backend)
    ex = Stent(stent_backend)
    try:
        eid = await ex.dispatch(app.zombie_step, "zombie", then, HOLD)
        zombie = fleet.start()

        def zombie_started() -> bool:
            return any(r.pid == zombie.pid for r in read_ledger(fleet.ledger_dir).runs)

        await _until(zombie_started, 30, "the step to start on the first worker")
        fleet.pause(zombie)  # mid-step: it holds the lease (fence 1) and runs the body
        rescuer = fleet.start()
        assert await ex.wait_for(eid, expiry=60) == Result.Ok("zombie")
        await asyncio.sleep(0.5)  # the rescuer's last writes after the completion
        before = await probe.snapshot()

        fleet.resume(zombie)
        stale_lines: list[str] = []

        def zombie_noticed() -> bool:
            stale_lines[:] = [x for x in zombie.log.read_text().splitlines()
                              if STALE.search(x) and " WARNING " in x]
            return bool(stale_lines)

        await _until(zombie_noticed, 15, "the zombie to notice its lost lease")
        # Time for everything it still had queued: body, child, heartbeats, claims.
        await asyncio.sleep(HOLD + 3 * LEASE / 3 + 1.0)
        zombie_noticed()
        after = await probe.snapshot()
        assert zombie.proc.poll() is None, "the zombie died instead of carrying on"
    finally:
        fleet.close()
        await probe.close()
        await ex.shutdown()

    report = await check(stent_backend, fleet.ledger_dir, completed=[eid], deaths=fleet.deaths)
    runs = read_ledger(fleet.ledger_dir).runs
    changed = {t: [r for r in after[t] if r not in before[t]] for t in before}
    result = {
        "seed": chaos_seed,
        "then": then,
        "runs": [[r.key, r.pid == zombie.pid, r.token_kind, r.fence, r.outcome] for r in runs],
        "zombie_pid": zombie.pid,
        "rescuer_pid": rescuer.pid,
        "stale_lease_warnings": stale_lines,
        "rows_changed": {t: len(v) for t, v in changed.items() if v},
        "oracle": report,
    }
    write_result(result, tmp_path / "result.json")
    assert after == before, f"the zombie changed rows: {changed}"
    assert report["ok"], result
    assert any(r.pid == rescuer.pid and r.key == "zombie" and r.outcome == "ok" for r in runs)
    assert stale_lines, result
    assert len(stale_lines) == 1, result

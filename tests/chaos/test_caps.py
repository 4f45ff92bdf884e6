"""``max_concurrent`` under contention: three worker processes with 16 slots each run 300
steps of a function capped at 3; the ledger never shows more than 3 bodies at once, and when
a worker holding some of them is SIGKILLed, its slots are free again once its lease ends."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from stent import Result, Stent

from . import app
from .fleet import Fleet
from .ledger import read_ledger
from .oracle import check, overlap_timeline, write_result
from .probe import open_probe
from .storm import Kill, track_takeover

LEASE = 3.0
POLL_MAX = 0.5
BOUND = LEASE + POLL_MAX + 2.0


@pytest.mark.timeout(180)
async def test_cap_holds_across_processes_and_a_killed_holders_slot_comes_back(
    stent_backend: Any, tmp_path: Path, chaos_seed: int
) -> None:
    rng = random.Random(chaos_seed)
    fleet = Fleet(stent_backend, tmp_path, concurrency=16,
                  lease=LEASE, poll_max=POLL_MAX)
    probe = await open_probe(stent_backend)
    ex = Stent(stent_backend)
    try:
        ids = [await ex.dispatch(app.capped_flow, g, 10, rng.randint(60, 120))
               for g in range(30)]
        for _ in range(3):
            fleet.start()
        # Kill a worker while it holds capped steps, once the work is well under way.
        await asyncio.sleep(rng.uniform(3.0, 5.0))
        for _ in range(200):
            held = {w: await probe.held_by(w.worker_id, "chaos.capped_step")
                    for w in fleet.workers}
            victim = next((w for w, h in held.items() if h), None)
            if victim is None:
                await asyncio.sleep(0.02)
                continue
            t = fleet.kill(victim)
            fleet.start()
            # what it held when it died (it may have finished some since the look above)
            kill = Kill(t, victim.pid, await probe.held_by(victim.worker_id,
                                                           "chaos.capped_step"))
            if kill.held:
                break
        else:
            raise AssertionError("no worker died holding a capped step:\n" + fleet.logs())
        await track_takeover(probe, kill, LEASE, give_up=BOUND + 30)
        results = await asyncio.wait_for(asyncio.gather(*(ex.wait_for(i) for i in ids)), 120)
    finally:
        fleet.close()
        await probe.close()
        await ex.shutdown()

    report = await check(stent_backend, fleet.ledger_dir, completed=ids,
                         caps={"chaos.capped_step": app.CAP}, deaths=fleet.deaths)
    capped = [r for r in read_ledger(fleet.ledger_dir).runs if r.fn == "chaos.capped_step"]
    back_to_cap = next((t for t, n in overlap_timeline(capped, fleet.deaths)
                        if t > kill.t and n == app.CAP), None)
    result = {
        "seed": chaos_seed,
        "steps": len(capped),
        "killed_holding": len(kill.held),
        "takeover_s": kill.taken_over,
        "cap_reached_again_after_s": None if back_to_cap is None
        else round(back_to_cap - kill.t, 3),
        "bound_s": BOUND,
        "oracle": report,
    }
    write_result(result, tmp_path / "result.json")
    assert results == [Result.Ok(10)] * 30
    assert report["ok"], result
    assert report["max_overlap"]["chaos.capped_step"] == app.CAP, "the cap was never reached"
    assert set(kill.taken_over) == set(kill.held), result
    assert max(kill.taken_over.values()) <= BOUND, result
    assert back_to_cap is not None and back_to_cap - kill.t <= BOUND, result

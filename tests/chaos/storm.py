"""The worker SIGKILL storm: worker processes run workflows (sequential steps, a durable sleep,
a fan-out) while one random worker is SIGKILLed every few seconds and restarted; then the
oracle judges the run, and the takeover time of every task the killed workers held is
measured (from the kill to its first claim by another worker).

Used by the CI-sized tests (``test_storm.py``) and the full run (``scripts/chaos/storm.py``).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stent import Result, Stent

from . import app
from .fleet import Fleet
from .oracle import check, write_result
from .probe import Probe, open_probe


@dataclass(frozen=True)
class StormConfig:
    seed: int
    workers: int = 3
    concurrency: int = 8
    workflows: int = 200
    #: workflows are dispatched evenly over this long, so that kills hit every phase
    dispatch_s: float = 20.0
    kill_every: tuple[float, float] = (2.0, 6.0)
    lease: float = 3.0
    poll: float = 0.1
    poll_max: float = 0.5
    steps: int = 5
    fanout: int = 3
    sleep_s: tuple[float, float] = (0.2, 1.0)
    work_ms: tuple[int, int] = (20, 150)
    #: for every workflow to finish once the last one is dispatched
    timeout: float = 150.0

    @property
    def takeover_bound(self) -> float:
        """A held task must be claimed again within lease + poll + 2 s of its worker's death."""
        return self.lease + self.poll_max + 2.0


@dataclass
class Kill:
    t: float
    pid: int
    held: dict[str, int]
    #: task id -> seconds from the kill to its first claim after it
    taken_over: dict[str, float] = field(default_factory=dict)
    #: held tasks finished under the victim's own fence: its completion was in flight when
    #: it was killed and committed just after (nothing left to take over)
    finished_by_victim: list[str] = field(default_factory=list)


async def track_takeover(probe: Probe, kill: Kill, lease: float, give_up: float) -> None:
    """Watch the killed worker's tasks until each is claimed again (its fence moves). The
    claim time is the earlier of the poll that saw it and its new lease's start (a claim
    leases until claim time + lease; heartbeats only move that later)."""
    waiting = dict(kill.held)
    while waiting and time.time() - kill.t < give_up:
        seen = await probe.leases(list(waiting))
        now = time.time()
        for tid, lease_now in seen.items():
            if lease_now.fence == waiting[tid] and lease_now.state in (
                    "completed", "failed", "cancelled"):
                kill.finished_by_victim.append(tid)
                del waiting[tid]
            elif lease_now.fence > waiting[tid]:
                claimed = now
                if lease_now.lease_expires_at is not None:
                    claimed = min(now, lease_now.lease_expires_at - lease)
                kill.taken_over[tid] = round(claimed - kill.t, 3)
                del waiting[tid]
        await asyncio.sleep(0.1)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def run_storm(cfg: StormConfig, backend: Any, workdir: Path) -> dict[str, Any]:
    """Run one storm on ``backend``'s database (PostgreSQL or SQLite); returns the result
    (also written to ``workdir/result.json``)."""
    workload = random.Random(cfg.seed)
    chaos = random.Random(cfg.seed + 1)
    fleet = Fleet(backend, workdir, concurrency=cfg.concurrency, lease=cfg.lease,
                  poll=cfg.poll, poll_max=cfg.poll_max)
    probe = await open_probe(backend)
    ex = Stent(backend)
    ids: list[str] = []
    kills: list[Kill] = []
    trackers: list[asyncio.Task[None]] = []

    async def dispatch() -> None:
        gap = cfg.dispatch_s / cfg.workflows
        for wf in range(cfg.workflows):
            ids.append(await ex.dispatch(
                app.workflow, wf, cfg.steps, cfg.fanout,
                round(workload.uniform(*cfg.sleep_s), 3), workload.randint(*cfg.work_ms)))
            await asyncio.sleep(gap)

    async def kill_loop() -> None:
        while True:
            await asyncio.sleep(chaos.uniform(*cfg.kill_every))
            victim = chaos.choice(fleet.workers)
            t = fleet.kill(victim)
            # After the SIGKILL nothing but a commit already in flight can change the
            # victim's leases until they expire: what storage says it holds now is what it
            # held when it died (less what such a commit finishes: see track_takeover).
            k = Kill(t, victim.pid, await probe.held_by(victim.worker_id))
            kills.append(k)
            fleet.start()
            trackers.append(asyncio.create_task(
                track_takeover(probe, k, cfg.lease, give_up=cfg.takeover_bound + 30)))

    started = time.time()
    results: list[Result[Any]] = []
    try:
        for _ in range(cfg.workers):
            fleet.start()
        killer = asyncio.create_task(kill_loop())
        try:
            await dispatch()
            results = await asyncio.wait_for(
                asyncio.gather(*(ex.wait_for(i) for i in ids)), cfg.timeout)
        finally:
            killer.cancel()
            await asyncio.gather(killer, return_exceptions=True)
        elapsed = time.time() - started
        await asyncio.gather(*trackers)
    finally:
        for tr in trackers:
            tr.cancel()
        fleet.close()
        await probe.close()
        await ex.shutdown()

    report = await check(backend, fleet.ledger_dir, completed=ids, deaths=fleet.deaths)
    takeovers = [s for k in kills for s in k.taken_over.values()]
    missing = [[k.pid, tid] for k in kills for tid in k.held
               if tid not in k.taken_over and tid not in k.finished_by_victim]
    slow = [[k.pid, tid, s] for k in kills for tid, s in k.taken_over.items()
            if s > cfg.takeover_bound]
    wrong = [[i, repr(r)] for i, r in zip(ids, results, strict=True)
             if r != Result.Ok(cfg.steps + cfg.fanout)]
    result = {
        "seed": cfg.seed,
        "backend": "postgres" if fleet.schema else "sqlite",
        "config": asdict(cfg),
        "elapsed_s": round(elapsed, 1),
        "workflows": len(ids),
        "kills": len(kills),
        "tasks_held_by_killed_workers": sum(len(k.held) for k in kills),
        "held_tasks_finished_by_the_victims_last_commit": sum(
            len(k.finished_by_victim) for k in kills),
        "takeover_s": {
            "count": len(takeovers),
            "p50": round(statistics.median(takeovers), 3) if takeovers else None,
            "p95": round(percentile(takeovers, 0.95), 3) if takeovers else None,
            "max": round(max(takeovers), 3) if takeovers else None,
            "bound": cfg.takeover_bound,
        },
        "not_taken_over": missing[:20],
        "slow_takeovers": slow[:20],
        "wrong_results": wrong[:20],
        "oracle": report,
    }
    result["ok"] = bool(report["ok"] and kills and not missing and not slow and not wrong)
    write_result(result, workdir / "result.json")
    return result


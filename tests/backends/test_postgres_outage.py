"""A worker survives PostgreSQL going away (SPEC §7, outages).

The server is stopped for 20 s while workflows are in flight. The worker must not exit; it
retries with capped backoff (at most 5 s apart), writes at most one WARNING per 30 s per
source however many calls fail, and within seconds of the server's return finishes the
workflows in flight and claims new work. This test stops and starts a real server, so it runs
on a private cluster of its own (``stent_testing.pg_cluster``), never on the shared one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from stent import Stent
from stent_postgres import PostgresBackend
from stent_postgres.listen import PostgresNotifications
from stent_testing.pg_cluster import PrivateCluster, require_private_cluster

from ..engine.helpers import start_worker, stop_worker

OUTAGE_S = 20.0
STEPS = 12
STEP_S = 0.25
events: dict[str, list[tuple[str, float]]] = defaultdict(list)


@Stent.durable(name="outagetest.step")
async def step(wf: str, n: int) -> int:
    events[wf].append((f"step-{n}", time.monotonic()))
    await asyncio.sleep(STEP_S)
    return n


@Stent.durable(name="outagetest.workflow")
async def workflow(wf: str, steps: int) -> int:
    events[wf].append(("start", time.monotonic()))
    total = 0
    for n in range(steps):
        total += await step(wf, n)
    return total


@pytest.fixture
async def cluster() -> AsyncIterator[PrivateCluster]:
    require_private_cluster()
    c = PrivateCluster()
    await asyncio.to_thread(c.init)
    try:
        await asyncio.to_thread(c.start)
        yield c
    finally:
        await asyncio.to_thread(c.destroy)


class CallLog:
    """Wraps an async method to record when each call started and whether it failed."""

    def __init__(self, obj: Any, name: str, monkeypatch: pytest.MonkeyPatch,
                 only: Any = None) -> None:
        self.calls: list[tuple[float, bool]] = []
        real = getattr(obj, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if only is not None and not only(*args, **kwargs):
                return await real(*args, **kwargs)
            t = time.monotonic()
            try:
                result = await real(*args, **kwargs)
            except BaseException:
                self.calls.append((t, False))
                raise
            self.calls.append((t, True))
            return result

        monkeypatch.setattr(obj, name, wrapper)

    def failed_between(self, start: float, end: float) -> list[float]:
        return [t for t, ok in self.calls if not ok and start <= t <= end]

    def first_success_after(self, t0: float) -> float | None:
        return next((t for t, ok in self.calls if ok and t >= t0), None)


def max_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch in [start, end] without an attempt."""
    points = [start, *sorted(times), end]
    return max(b - a for a, b in itertools.pairwise(points))


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_worker_rides_out_a_20s_database_outage(
    cluster: PrivateCluster, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="stent")
    events.clear()
    backend = PostgresBackend(cluster.dsn, schema="stent_outage", min_pool_size=1,
                              max_pool_size=6, connect_timeout=3)
    await backend.init_db()
    ex = Stent(backend, poll_min_interval=0.5, poll_max_interval=30.0)
    nb = ex.notifications_backend
    assert isinstance(nb, PostgresNotifications)
    claims = CallLog(backend, "claim", monkeypatch)
    polls = CallLog(backend, "get_outcomes", monkeypatch)
    listens = CallLog(nb, "_connect", monkeypatch, only=lambda role: role == "listen")
    timeline: dict[str, float] = {}
    worker = await start_worker(ex, poll_interval=0.5, max_concurrency=10,
                                lease_duration=60)
    try:
        ids = [await ex.dispatch(workflow, f"wf{i}", STEPS) for i in range(4)]
        waits = [asyncio.ensure_future(ex.wait_for(i)) for i in ids]
        t_begin = time.monotonic()
        await asyncio.sleep(1.0)  # a few steps into each workflow
        in_flight = {f"wf{i}": len(events[f"wf{i}"]) for i in range(4)}
        assert all(1 < n <= STEPS for n in in_flight.values()), in_flight  # started, unfinished

        # -- the outage -------------------------------------------------------------------
        t_stop = time.monotonic()
        await asyncio.to_thread(cluster.stop)
        timeline["stopped"] = time.monotonic() - t_begin
        await asyncio.sleep(OUTAGE_S)
        t_back = time.monotonic()
        assert not worker.done(), "the worker exited during the outage"
        assert not any(w.done() for w in waits)
        await asyncio.to_thread(cluster.start)
        t_started = time.monotonic()
        timeline["started again"] = t_started - t_begin

        # -- recovery ---------------------------------------------------------------------
        # new work from another client (as another process would dispatch it): the worker
        # hears of it by NOTIFY once its listener is back, or finds it by its claim poll
        client = Stent(PostgresBackend(cluster.dsn, schema="stent_outage", min_pool_size=1))
        try:
            new_ids = [await client.dispatch(workflow, f"new{i}", 1) for i in range(3)]
        finally:
            await client.shutdown()
            await client.backend.close()
        results = await asyncio.wait_for(asyncio.gather(*waits), 30)
        t_done = time.monotonic()
        assert [r.unwrap() for r in results] == [sum(range(STEPS))] * 4
        resumed = min(t for wf in events.values() for _, t in wf if t >= t_started)
        timeline["in-flight workflows resumed"] = resumed - t_begin
        timeline["in-flight workflows done"] = t_done - t_begin
        new_results = await asyncio.wait_for(
            asyncio.gather(*(ex.wait_for(i) for i in new_ids)), 15)
        assert [r.unwrap() for r in new_results] == [0, 0, 0]
        new_started = max(events[f"new{i}"][0][1] for i in range(3))
        timeline["new workflows claimed"] = new_started - t_begin
        # the listener retries at most 5 s apart: it is back within seconds too
        deadline = t_started + 8.0
        while not nb.listening and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert nb.listening, "the LISTEN connection did not come back"
        assert not worker.done()
    finally:
        await stop_worker(ex, worker)
        await backend.close()

    first_claim = claims.first_success_after(t_back)
    first_poll = polls.first_success_after(t_back)
    first_listen = listens.first_success_after(t_back)
    assert first_claim is not None and first_poll is not None and first_listen is not None
    timeline["claim loop resumed"] = first_claim - t_begin
    timeline["completion poll resumed"] = first_poll - t_begin
    timeline["LISTEN resumed"] = first_listen - t_begin
    failed = {"claims": claims.failed_between(t_stop, t_started),
              "polls": polls.failed_between(t_stop, t_started),
              "listens": listens.failed_between(t_stop, t_started)}
    gaps = {k: round(max_gap(v, t_stop + 0.5, t_back), 2) for k, v in failed.items()}
    warnings = [(r.name, r.created, r.getMessage()) for r in caplog.records
                if r.levelno >= logging.WARNING]
    print("timeline (s from the first dispatch):",
          {k: round(v, 2) for k, v in timeline.items()})
    print("failed attempts during the outage:", {k: len(v) for k, v in failed.items()},
          "longest gap between attempts:", gaps)
    print("warnings:", [(n, round(c - time.time() + time.monotonic() - t_begin, 1), m[:90])
                        for n, c, m in warnings])

    # the outage was noticed, and retried with capped backoff: never more than 5 s apart,
    # never hammering the server either
    for kind, times in failed.items():
        assert times, f"no failed {kind} during the outage: was it noticed?"
        assert gaps[kind] <= 5.5, (kind, gaps)
        assert len(times) <= OUTAGE_S / 0.1, (kind, len(times))
    assert len(failed["claims"]) < 20, failed["claims"]  # 0.5, 1, 2, 4, 5, 5, ...

    # at most one WARNING per 30 s per source (the whole test lasts less than 60 s)
    by_source: dict[str, list[float]] = defaultdict(list)
    for name, created, _ in warnings:
        by_source[name].append(created)
    for name, times in by_source.items():
        times.sort()
        assert all(b - a >= 30 for a, b in itertools.pairwise(times)), (
            name, [m for n, _, m in warnings if n == name])
    assert "stent.worker" in by_source and "stent.waiting" in by_source
    assert "stent.notifications.postgres" in by_source

    # resumed within seconds of the server's return
    assert first_claim - t_started < 6.0, timeline
    assert first_poll - t_started < 6.0, timeline
    assert first_listen - t_started < 6.0, timeline
    assert resumed - t_started < 6.0, timeline
    assert t_done - t_started < 15.0, timeline
    assert new_started - t_started < 6.0, timeline

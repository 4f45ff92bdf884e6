"""SPEC §7: a step running past ``slow_step_warning`` is logged at WARNING (function and task
id), again at every further interval; a step blocking the event loop past a third of the
lease is logged."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from stent import Result, Stent
from stent.backend import Backend
from stent_testing import FakeClock, InMemoryBackend

from ..engine.helpers import start_worker, stop_worker

gates: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _gate() -> None:
    gates["slow"] = asyncio.Event()


@Stent.durable
async def slow_step() -> str:
    await gates["slow"].wait()
    return "done"


@Stent.durable
async def blocks_the_loop() -> str:
    time.sleep(0.8)  # blocking code inside an async step: the loop stops for 0.8 s
    return "blocked"


def _slow_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.levelno == logging.WARNING and "slow_step_warning" in r.getMessage()]


async def test_a_slow_step_is_warned_about_at_every_interval(
    stent_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stent")
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex, slow_step_warning="10m")
    try:
        eid = await ex.dispatch(slow_step)
        for _ in range(200):
            if ex.worker_status_overview()["workers"][0]["active_tasks"]:
                break
            await asyncio.sleep(0.01)
        await clock.advance("9m")
        assert _slow_warnings(caplog) == []
        await clock.advance("2m")
        first = _slow_warnings(caplog)
        assert len(first) == 1
        assert slow_step.name in first[0].getMessage() and eid in first[0].getMessage()
        assert first[0].task_id == eid  # type: ignore[attr-defined]
        await clock.advance("10m")
        assert len(_slow_warnings(caplog)) == 2
        gates["slow"].set()
        assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok("done")
    finally:
        await stop_worker(ex, w)


async def test_a_step_blocking_the_event_loop_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """About the event loop, not storage: one backend shows it."""
    caplog.set_level(logging.INFO, logger="stent")
    ex = Stent(InMemoryBackend(), clock=FakeClock())
    # a 1.5 s lease: a third of it is 0.5 s, and the step blocks for 0.8 s
    w = await start_worker(ex, lease_duration=1.5)
    try:
        await asyncio.sleep(0.3)  # the watcher is running
        eid = await ex.dispatch(blocks_the_loop)
        assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok("blocked")
        await asyncio.sleep(0.5)
        blocked = [r for r in caplog.records if "event loop was blocked" in r.getMessage()]
        assert blocked and blocks_the_loop.name in blocked[0].getMessage()
    finally:
        await stop_worker(ex, w)

"""The fake clock moves ``datetime.now()`` and ``time.time()`` for user code (time-machine),
with ``clock.now()`` as the source of truth (SPEC §11)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from stent import Stent
from stent_testing import FakeClock, system_time_available

from .workflows import KIT

pytest.importorskip("time_machine", reason="time-machine moves datetime.now()/time.time()")


@Stent.durable(name="kit.test.wall_clock", registry=KIT)
async def wall_clock() -> float:
    """What user code reads from ``time.time()`` after a 10-day durable sleep."""
    await Stent.sleep("10d")
    return time.time()


def test_time_machine_is_detected() -> None:
    assert system_time_available()


async def test_datetime_now_reads_the_fake_clock(fake_clock: FakeClock) -> None:
    assert datetime.now(UTC) == fake_clock.now()


async def test_time_time_follows_an_advance(fake_clock: FakeClock) -> None:
    fake_clock.auto_advance = False
    before = time.time()
    await fake_clock.advance(timedelta(days=3))
    assert time.time() - before == pytest.approx(3 * 86400)
    assert time.time() == pytest.approx(fake_clock.now().timestamp())


async def test_user_code_sees_the_time_after_a_durable_sleep(
    stent_worker: Stent, fake_clock: FakeClock
) -> None:
    start = fake_clock.now()
    eid = await stent_worker.dispatch(wall_clock)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 10)
    assert result.ok
    assert result.unwrap() >= (start + timedelta(days=10)).timestamp()


async def test_stop_gives_the_real_time_back() -> None:
    clock = FakeClock(start=datetime(2040, 1, 1, tzinfo=UTC), system_time=True)
    assert datetime.now(UTC).year == 2040
    clock.stop()
    assert datetime.now(UTC).year < 2040


async def test_system_time_is_off_unless_asked_for() -> None:
    clock = FakeClock(start=datetime(2040, 1, 1, tzinfo=UTC))
    assert not clock.system_time
    assert datetime.now(UTC).year < 2040


async def test_the_monotonic_clock_and_the_event_loop_are_left_alone() -> None:
    clock = FakeClock(system_time=True)
    try:
        before = time.monotonic()
        await clock.advance(timedelta(days=365))
        assert time.monotonic() - before < 60
        await asyncio.sleep(0.001)  # the event loop still keeps real time
    finally:
        clock.stop()



"""``FakeClock.advance``: everything due in the span fires, in time order, at its own time
(SPEC §11); and the engine's timers, retries and lease expiries ride on it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from stent import Result, Stent
from stent.backend import Backend
from stent_testing import FakeClock

from . import workflows
from .workflows import KIT, bill_after_trial, trial


async def _sleep_and_note(clock: FakeClock, seconds: float, woke: list[tuple[float, float]]
                          ) -> None:
    start = clock.now()
    await clock.sleep(seconds)
    woke.append((seconds, (clock.now() - start).total_seconds()))


async def test_advance_wakes_sleepers_in_time_order() -> None:
    clock = FakeClock()
    woke: list[tuple[float, float]] = []
    tasks = [asyncio.ensure_future(_sleep_and_note(clock, s, woke)) for s in (30, 10, 20)]
    await asyncio.sleep(0)
    await clock.advance(60)
    assert [s for s, _ in woke] == [10, 20, 30]
    await asyncio.gather(*tasks)


async def test_each_sleeper_wakes_at_exactly_its_due_time() -> None:
    clock = FakeClock()
    woke: list[tuple[float, float]] = []
    tasks = [asyncio.ensure_future(_sleep_and_note(clock, s, woke)) for s in (5, 50)]
    await asyncio.sleep(0)
    await clock.advance("1m")
    assert sorted(woke) == [(5, 5.0), (50, 50.0)]
    await asyncio.gather(*tasks)


async def test_advance_leaves_later_sleepers_asleep() -> None:
    clock = FakeClock()
    woke: list[tuple[float, float]] = []
    task = asyncio.ensure_future(_sleep_and_note(clock, 3600, woke))
    await asyncio.sleep(0)
    await clock.advance(3599)
    assert woke == [] and not task.done()
    await clock.advance(1)
    assert woke == [(3600, 3600.0)]


async def test_advance_fires_what_becomes_due_inside_the_span() -> None:
    clock = FakeClock()
    fired: list[float] = []

    async def chain() -> None:
        for _ in range(3):
            await clock.sleep(10)
            fired.append(clock.monotonic())

    task = asyncio.ensure_future(chain())
    await asyncio.sleep(0)
    await clock.advance(35)
    assert fired == [10.0, 20.0, 30.0]
    await task


async def test_advance_wakes_polls_only_at_hinted_times() -> None:
    """A poll (a look-again sleep) is not a stop: a jump wakes it at the next time that
    matters, so a 10,000 s advance costs two wake-ups instead of 10,000 polls."""
    clock = FakeClock()
    seen: list[float] = []

    async def poller() -> None:
        while len(seen) < 2:
            await clock.poll_sleep(1)
            seen.append(clock.monotonic())

    task = asyncio.ensure_future(poller())
    await asyncio.sleep(0)
    clock.hint(clock.now() + timedelta(seconds=7))
    await clock.advance(10_000)
    assert seen == [7.0, 10_000.0]
    await task


async def test_advance_accepts_duration_strings() -> None:
    clock = FakeClock(start=datetime(2031, 5, 1, tzinfo=UTC))
    await clock.advance("1d2h")
    assert clock.now() == datetime(2031, 5, 2, 2, tzinfo=UTC)


async def test_advance_while_auto_advancing_does_not_overshoot() -> None:
    clock = FakeClock(auto_advance=True)
    try:
        later = asyncio.ensure_future(clock.sleep(100))
        await clock.advance(10)
        assert clock.monotonic() == 10.0, "no automatic jump while advance() runs"
        assert not later.done()
        await asyncio.wait_for(later, 5)  # and auto-advance goes on afterwards
    finally:
        clock.stop()


async def test_a_hand_driven_clock_does_not_move_by_itself(
    stent_worker: Stent, fake_clock: FakeClock
) -> None:
    fake_clock.auto_advance = False
    workflows.flaky_failures["left"] = 0
    eid = await stent_worker.dispatch(trial, "acct-2")
    await asyncio.sleep(0.05)
    assert (await stent_worker.state_of(eid)).state == "running"
    await fake_clock.advance(timedelta(days=30))
    assert await asyncio.wait_for(stent_worker.wait_for(eid), 5) == Result.Ok("invoice-acct-2")


async def test_advance_fires_each_retry_at_its_backoff(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    workflows.flaky_failures["left"] = 2
    ex = Stent(stent_backend, clock=clock, function_registry=KIT)
    worker = asyncio.ensure_future(ex.serve(poll_interval=0.05))
    try:
        await asyncio.wait_for(ex.wait_until_ready(), 5)
        eid = await ex.dispatch(bill_after_trial, "acct-3")
        await clock.advance(59)
        assert (await stent_backend.get_task(eid)).retries == 1  # type: ignore[union-attr]
        await clock.advance(1)
        assert (await stent_backend.get_task(eid)).retries == 2  # type: ignore[union-attr]
        await clock.advance(119)
        assert (await ex.state_of(eid)).state == "running"
        await clock.advance(1)
        assert await asyncio.wait_for(ex.wait_for(eid), 5) == Result.Ok("invoice-acct-3")
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await ex.shutdown()


async def test_advance_past_a_lease_lets_another_worker_take_the_task_over(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    blocked = asyncio.Event()

    @Stent.durable(name="kit.test.stuck", registry=KIT)
    async def stuck() -> str:
        await blocked.wait()
        return "never"

    first = Stent(stent_backend, clock=clock, function_registry=KIT)
    w1 = asyncio.ensure_future(first.serve(poll_interval=0.05, lease_duration="1m",
                                           heartbeat_interval="10m"))
    try:
        await asyncio.wait_for(first.wait_until_ready(), 5)
        eid = await first.dispatch(stuck)
        await clock.advance(1)
        task = await stent_backend.get_task(eid)
        assert task is not None and task.state == "running" and task.fence == 1
        await clock.advance(60)
        task = await stent_backend.get_task(eid)
        assert task is not None and task.fence == 2, "re-claimed once the lease expired"
    finally:
        w1.cancel()
        await asyncio.gather(w1, return_exceptions=True)
        await first.shutdown()

"""Per-attempt step timeouts and durable sleep, on the engine clock."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
from stent import NotInExecutionContext, Result, RetryPolicy, Stent, StepTimeoutError
from stent.backend import Backend
from stent_testing import FakeClock

from .helpers import start_worker, stop_worker

runs: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()


@Stent.durable(timeout="5s", retry_policy=RetryPolicy(max_attempts=2, initial_delay=1, jitter=0))
async def hangs_first_time() -> str:
    runs["hangs"] += 1
    if runs["hangs"] == 1:
        await asyncio.Event().wait()  # never returns
    return "second try"


@Stent.durable(timeout="5s", retry_policy=RetryPolicy(max_attempts=1))
async def always_hangs() -> None:
    await asyncio.Event().wait()


@Stent.durable
async def raises_its_own_timeout() -> None:
    raise TimeoutError("the user's own timeout")


@Stent.durable
async def naps(seconds: float) -> str:
    before = await Stent.now()
    await Stent.sleep(seconds)
    after = await Stent.now()
    return f"{(after - before).total_seconds():.0f}"


async def test_step_over_its_timeout_fails_with_a_retryable_step_timeout(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex)
    eid = await ex.dispatch(hangs_first_time)
    await clock.advance(4.9)
    assert runs["hangs"] == 1
    await clock.advance(0.2)  # the 5 s timeout passes: a StepTimeoutError, retried after 1 s
    for _ in range(500):  # until the retry is recorded (its due time is taken then)
        root = await stent_backend.get_task(eid)
        if root is not None and root.state == "pending" and root.attempt == 2:
            break
        await asyncio.sleep(0.01)
    waiter = asyncio.ensure_future(ex.wait_for(eid))
    for _ in range(30):  # past the 1 s retry delay (again, if a loaded machine was slow)
        await clock.advance(1)
        if waiter.done():
            break
    assert await asyncio.wait_for(waiter, 10) == Result.Ok("second try")
    assert runs["hangs"] == 2
    await stop_worker(ex, w)


async def test_exhausted_step_timeout_is_stored_as_step_timeout_error(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(always_hangs)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 10)
    assert isinstance(result.error, StepTimeoutError)
    assert always_hangs.name in str(result.error)


async def test_a_users_own_timeout_error_is_an_ordinary_error(stent_worker: Stent) -> None:
    result = await asyncio.wait_for(
        stent_worker.wait_for(await stent_worker.dispatch(raises_its_own_timeout)), 10)
    assert type(result.error) is TimeoutError


async def test_durable_sleep_waits_on_the_engine_clock(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex)
    eid = await ex.dispatch(naps, 3600)
    await clock.advance(3599)
    assert (await ex.state_of(eid)).state == "running"
    await clock.advance(2)
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok("3600")
    await stop_worker(ex, w)


async def test_a_thirty_day_sleep_finishes_at_once_with_the_fixtures(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(naps, timedelta(days=30).total_seconds())
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 10)
    assert result == Result.Ok(str(30 * 86400))


async def test_sleep_outside_a_task_sleeps_normally_and_helpers_refuse() -> None:
    await Stent.sleep("1ms")
    with pytest.raises(NotInExecutionContext):
        await Stent.now()
    with pytest.raises(NotInExecutionContext):
        Stent.context()
    with pytest.raises(ValueError, match="-1s"):
        await Stent.sleep("-1s")

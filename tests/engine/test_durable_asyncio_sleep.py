"""``durable_asyncio_sleep=True`` promotes a durable function's own ``asyncio.sleep(>= 1 s)``."""

from __future__ import annotations

import asyncio

import pytest
from stent import Result, Stent
from stent.asyncio_sleep import uninstall
from stent.backend import Backend
from stent_testing import FakeClock

from .helpers import start_worker, stop_worker


async def library_call() -> str:
    await asyncio.sleep(0.001)
    return "lib"


@Stent.durable
async def sleepy() -> str:
    await asyncio.sleep(3600)  # promoted: a durable timer on the engine clock
    await asyncio.sleep(0)  # under a second: left alone
    return await library_call()


@pytest.fixture(autouse=True)
def _restore_asyncio_sleep() -> object:
    yield
    uninstall()


async def test_asyncio_sleep_is_not_patched_by_default(stent_backend: Backend) -> None:
    original = asyncio.sleep
    Stent(stent_backend)
    assert asyncio.sleep is original


async def test_long_asyncio_sleep_in_a_durable_function_becomes_a_durable_timer(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock, durable_asyncio_sleep=True)
    w = await start_worker(ex)
    eid = await ex.dispatch(sleepy)
    await clock.advance(10)
    kinds = [t.kind for t in await stent_backend.list_tasks_for_execution(eid)]
    assert "sleep" in kinds, "the hour-long asyncio.sleep was not made durable"
    await clock.advance(3600)
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok("lib")
    await stop_worker(ex, w)

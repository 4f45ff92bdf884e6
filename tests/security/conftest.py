"""Fixtures of the security tests: they run on both SQL backends (SQLite and PostgreSQL),
with direct SQL access beside the backend."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from stent import Stent
from stent.backend import Backend

from .rawdb import RawDB


@pytest.fixture(params=["sqlite", "postgres"])
def stent_backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def raw(stent_backend: Backend) -> RawDB:
    return RawDB.of(stent_backend)


async def start_worker(executor: Stent, **kw: Any) -> asyncio.Task[None]:
    """``executor.serve(**kw)`` in the background, ready to claim."""
    kw.setdefault("poll_interval", 0.05)
    task = asyncio.get_running_loop().create_task(executor.serve(**kw))
    ready = asyncio.ensure_future(executor.wait_until_ready())
    await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    assert ready.done(), "the worker did not become ready within 15 s"
    return task


async def stop_worker(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def worker_of() -> AsyncIterator[Any]:
    """``await worker_of(executor)`` starts a worker, stopped after the test."""
    started: list[asyncio.Task[None]] = []

    async def start(executor: Stent, **kw: Any) -> asyncio.Task[None]:
        task = await start_worker(executor, **kw)
        started.append(task)
        return task

    yield start
    for task in started:
        await stop_worker(task)

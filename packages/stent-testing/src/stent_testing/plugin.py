"""The pytest plugin (registered through the ``pytest11`` entry point).

Fixtures: ``stent_backend_kind``, ``stent_backend``, ``fake_clock``, ``stent_executor``,
``stent_worker``, ``crash``. The backend is in-memory unless ``--stent-backend=sqlite`` (or an
override of ``stent_backend_kind``) says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from stent import Stent
from stent.backend import Backend

from .clock import FakeClock
from .crash import CrashPlan
from .memory import InMemoryBackend

BACKEND_KINDS = ("memory", "sqlite")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stent")
    group.addoption(
        "--stent-backend", action="store", default="memory", choices=BACKEND_KINDS,
        help="backend for the stent_backend fixture (default: memory)",
    )


async def make_backend(kind: str, tmp_path: Path) -> Backend:
    """A fresh, initialised backend of ``kind`` whose files live under ``tmp_path``."""
    if kind == "memory":
        backend: Backend = InMemoryBackend()
    elif kind == "sqlite":
        from stent_postgres import SQLiteBackend

        backend = SQLiteBackend(tmp_path / "stent.sqlite")
    else:
        raise ValueError(f"unknown stent backend kind {kind!r}; known: {', '.join(BACKEND_KINDS)}")
    await backend.init_db()
    return backend


@pytest.fixture
def stent_backend_kind(request: pytest.FixtureRequest) -> str:
    """Which backend ``stent_backend`` builds (override this fixture to choose per test)."""
    return str(request.config.getoption("--stent-backend"))


@pytest_asyncio.fixture
async def stent_backend(stent_backend_kind: str, tmp_path: Path) -> AsyncIterator[Backend]:
    """An initialised backend, closed after the test."""
    backend = await make_backend(stent_backend_kind, tmp_path)
    try:
        yield backend
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(backend.close(), 10)


@pytest_asyncio.fixture
async def fake_clock() -> AsyncIterator[FakeClock]:
    """A ``FakeClock`` that auto-advances whenever the program is idle."""
    clock = FakeClock(auto_advance=True)
    try:
        yield clock
    finally:
        clock.stop()


@pytest_asyncio.fixture
async def stent_executor(stent_backend: Backend, fake_clock: FakeClock) -> AsyncIterator[Stent]:
    """The default executor (``Stent.use``) on ``stent_backend`` with ``fake_clock``."""
    executor = Stent.use(stent_backend, clock=fake_clock)
    try:
        yield executor
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(executor.shutdown(), 10)
        Stent.reset()


@pytest_asyncio.fixture
async def stent_worker(stent_executor: Stent) -> AsyncIterator[Stent]:
    """``stent_executor`` with a worker serving it, ready before the test starts."""
    task = asyncio.get_running_loop().create_task(
        stent_executor.serve(max_concurrency=16, poll_interval=0.05)
    )
    ready = asyncio.ensure_future(stent_executor.wait_until_ready())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield stent_executor
    finally:
        ready.cancel()
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 10)


@pytest.fixture
def crash() -> Iterator[CrashPlan]:
    """A crash-injection plan, installed for this test."""
    plan = CrashPlan().install()
    try:
        yield plan
    finally:
        plan.uninstall()



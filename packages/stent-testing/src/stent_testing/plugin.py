"""The pytest plugin (registered through the ``pytest11`` entry point).

Fixtures: ``stent_backend_kind``, ``stent_backend``, ``fake_clock``, ``stent_executor``,
``stent_worker``, ``crash``; and ``stent_executor_options``/``stent_worker_options`` to pass
options to the executor and its worker. The backend is in-memory unless
``--stent-backend=sqlite`` (or an override of ``stent_backend_kind``) says otherwise.

Every fixture works in pytest-asyncio's strict and auto modes, and its teardown never waits on
the workflows a test leaves behind: a worker is stopped by cancellation (its tasks are given
back to storage), and the clock releases every sleeper.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from stent import Stent
from stent.backend import Backend

from .clock import FakeClock, system_time_available
from .crash import CrashPlan
from .memory import InMemoryBackend
from .notifications import LocalNotifications
from .supervisor import WorkerSupervisor

#: per-test links between the fixtures (the crash plan restarts the supervised worker)
_BUS = pytest.StashKey[LocalNotifications | None]()
_SUPERVISOR = pytest.StashKey[WorkerSupervisor]()
_PLAN = pytest.StashKey[CrashPlan]()

#: ``Stent.serve`` options of the ``stent_worker`` fixture, before ``stent_worker_options``
WORKER_DEFAULTS: dict[str, Any] = {"max_concurrency": 16, "poll_interval": 0.05}

BACKEND_KINDS = ("memory", "sqlite", "postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stent")
    group.addoption(
        "--stent-backend", action="store", default="memory", choices=BACKEND_KINDS,
        help="backend for the stent_backend fixture (default: memory); postgres uses "
        "$STENT_TEST_POSTGRES_DSN",
    )


async def make_backend(kind: str, tmp_path: Path) -> Backend:
    """A fresh, initialised backend of ``kind`` whose files live under ``tmp_path``."""
    if kind == "memory":
        backend: Backend = InMemoryBackend()
    elif kind == "sqlite":
        from stent_postgres import SQLiteBackend

        backend = SQLiteBackend(tmp_path / "stent.sqlite")
    elif kind == "postgres":
        from .pg import create_test_backend

        # Its own schema, already initialised; dispose_test_backend drops it.
        return await create_test_backend()
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
    """An initialised backend, closed after the test (a Postgres one's schema dropped)."""
    backend = await make_backend(stent_backend_kind, tmp_path)
    try:
        yield backend
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(backend.close(), 10)
        if stent_backend_kind == "postgres":
            from .pg import dispose_test_backend

            await dispose_test_backend(backend)


@pytest_asyncio.fixture
async def fake_clock() -> AsyncIterator[FakeClock]:
    """A ``FakeClock`` that auto-advances whenever the program is idle, and moves
    ``datetime.now()``/``time.time()`` too when ``time-machine`` is installed."""
    clock = FakeClock(auto_advance=True, system_time=system_time_available())
    try:
        yield clock
    finally:
        clock.stop()


def _bus_for(backend: Backend) -> LocalNotifications | None:
    """An in-process notification bus for the test's executors, unless the backend brings its
    own wake-ups (Postgres LISTEN/NOTIFY), which then connect them as in production."""
    if callable(getattr(backend, "default_notification_backend", None)):
        return None
    return LocalNotifications()


@pytest.fixture
def stent_executor_options() -> dict[str, Any]:
    """Extra ``Stent(...)`` keyword arguments for ``stent_executor`` (override this fixture,
    e.g. to return ``{"serializer": "pickle", "pickle_key": ...}`` or
    ``{"function_registry": my_registry}``)."""
    return {}


@pytest_asyncio.fixture
async def stent_executor(
    stent_backend: Backend, fake_clock: FakeClock, stent_executor_options: dict[str, Any],
    request: pytest.FixtureRequest,
) -> AsyncIterator[Stent]:
    """The default executor (``Stent.use``) on ``stent_backend`` with ``fake_clock``."""
    bus = _bus_for(stent_backend)
    request.node.stash[_BUS] = bus
    options: dict[str, Any] = {
        "clock": fake_clock,
        "notification_backend": bus.endpoint() if bus is not None else None,
        **stent_executor_options,
    }
    executor = Stent.use(stent_backend, **options)
    try:
        yield executor
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(executor.shutdown(), 10)
        Stent.reset()


@pytest.fixture
def stent_worker_options() -> dict[str, Any]:
    """Extra ``Stent.serve`` keyword arguments for ``stent_worker`` (override this fixture,
    e.g. to return ``{"lease_duration": "30s"}``)."""
    return {}


@pytest_asyncio.fixture
async def stent_worker(
    stent_executor: Stent, stent_worker_options: dict[str, Any], request: pytest.FixtureRequest
) -> AsyncIterator[Stent]:
    """``stent_executor`` with a worker serving it, ready before the test starts.

    The worker is supervised: when it dies of an injected crash, a fresh worker (a new
    ``Stent`` on the same backend and clock) takes its place, and the clock's auto-advance
    carries it past the dead worker's leases.
    """
    supervisor = WorkerSupervisor(
        stent_executor, serve_options={**WORKER_DEFAULTS, **stent_worker_options},
        bus=request.node.stash.get(_BUS, None),
    )
    request.node.stash[_SUPERVISOR] = supervisor
    plan = request.node.stash.get(_PLAN, None)
    if plan is not None:
        plan.attach(supervisor)
    try:
        await supervisor.start()
        yield stent_executor
    finally:
        await supervisor.stop()


@pytest.fixture
def crash(request: pytest.FixtureRequest) -> Iterator[CrashPlan]:
    """A crash-injection plan, installed for this test (and linked to ``stent_worker``)."""
    plan = CrashPlan().install()
    request.node.stash[_PLAN] = plan
    supervisor = request.node.stash.get(_SUPERVISOR, None)
    if supervisor is not None:
        plan.attach(supervisor)
    try:
        yield plan
    finally:
        plan.uninstall()

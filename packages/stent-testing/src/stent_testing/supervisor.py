"""``WorkerSupervisor``: the worker behind the ``stent_worker`` fixture, replaced when it dies.

An injected crash (``stent_testing.crash``) kills a worker the way SIGKILL kills a process:
its coroutines are dropped, nothing more is written, its leases stay held in storage. The
supervisor then plays the part of a process manager: it starts a fresh worker in a *new*
``Stent`` instance (so that no in-memory state survives) on the same backend, clock and
function registry. The tasks the dead worker held are claimed again once their leases expire
(the fixtures' clock auto-advances there) and finish by replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from stent import Stent, faults
from stent.clock import hint_due
from stent.durations import parse_duration

from .notifications import LocalNotifications

log = logging.getLogger("stent.testing.supervisor")

__all__ = ["WorkerSupervisor"]

#: engine default for ``serve(lease_duration=...)``
DEFAULT_LEASE = timedelta(minutes=5)
#: a lease is lost strictly after its expiry time
_TICK = timedelta(microseconds=1)


class WorkerSupervisor:
    """Serve ``executor`` with one worker, and replace the worker when it dies of an
    injected crash.

    Args:
        executor: the executor the test uses (its first worker runs on it; replacements run
            on fresh ``Stent`` instances with the same settings).
        serve_options: keyword arguments for ``Stent.serve``.
        auto_restart: start a replacement as soon as a worker dies. When False, a dead
            worker stays dead until :meth:`restart`.
        bus: in-process notifications shared by every executor of the test, so that the
            test's executor hears at once about work done by a replacement worker.
    """

    def __init__(
        self, executor: Stent, *, serve_options: dict[str, Any] | None = None,
        auto_restart: bool = True, bus: LocalNotifications | None = None,
    ) -> None:
        self.client = executor
        self.serve_options = dict(serve_options or {})
        self.auto_restart = auto_restart
        self._bus = bus
        #: every executor that has served, oldest first; the last one serves now (or died)
        self.executors: list[Stent] = [executor]
        #: how many workers died of an injected crash
        self.deaths = 0
        self._deaths_seen = 0
        self._alive = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Condition | None = None
        self._restart_wanted: asyncio.Event | None = None

    # -- public -------------------------------------------------------------------------------
    @property
    def current(self) -> Stent:
        """The executor whose worker serves now (or the last one, if it died)."""
        return self.executors[-1]

    @property
    def alive(self) -> bool:
        """Whether a worker is serving right now."""
        return self._alive

    @property
    def lease(self) -> timedelta:
        """The lease duration the workers are served with."""
        return parse_duration(self.serve_options.get("lease_duration", DEFAULT_LEASE))

    async def start(self, timeout: float = 10.0) -> None:
        """Start serving and return once the first worker is ready.

        Raises:
            Exception: whatever made the worker stop before it was ready.
        """
        self._changed = asyncio.Condition()
        self._restart_wanted = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name="stent-testing-supervisor"
        )
        await self._wait(lambda: self._alive or self._task is None or self._task.done(), timeout)
        if self._task.done():
            self._task.result()

    async def restart(self, timeout: float = 10.0) -> Stent:
        """Make sure a fresh worker serves after a crash: start the replacement if none was
        started automatically, and wait until it is ready. If no worker died since the last
        call, the current one is killed abruptly first (as ``kill -9`` would).

        Returns:
            The executor of the new worker.
        """
        if self._task is None:
            raise RuntimeError("the supervisor was not started")
        deaths = self.deaths
        if deaths == self._deaths_seen and self._alive:
            # Nothing died since the last restart: this restart is a kill.
            for worker in list(self.current._workers):
                worker.crash()
            await self._wait(lambda: self.deaths > deaths, timeout)
        self._deaths_seen = self.deaths
        served = len(self.executors)
        if self._restart_wanted is not None:
            self._restart_wanted.set()
        await self._wait(lambda: self._alive and len(self.executors) >= served, timeout)
        return self.current

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and shut down every replacement executor (never hangs past
        ``timeout`` seconds per step)."""
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, timeout)
        for executor in self.executors[1:]:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(executor.shutdown(), timeout)

    # -- the supervision loop -----------------------------------------------------------------
    async def _supervise(self) -> None:
        executor = self.client
        assert self._restart_wanted is not None
        while True:
            # Cleared before the worker can die, so that a restart() asked for right after
            # the death is not lost.
            self._restart_wanted.clear()
            died = await self._serve_once(executor)
            if not died or self._stopping:
                return
            self.deaths += 1
            # Every lease the dead worker held ends by now + lease: make that a time a fake
            # clock stops at, so that auto-advance carries the replacement there at once.
            clock = self.client.clock
            hint_due(clock, clock.now() + self.lease + _TICK)
            await self._notify()
            log.info("worker died of an injected crash (%d so far)", self.deaths)
            if not self.auto_restart:
                await self._restart_wanted.wait()
            executor = self._fresh_executor()
            self.executors.append(executor)

    async def _serve_once(self, executor: Stent) -> bool:
        """Serve on ``executor`` until it stops; True if it died of an injected crash."""
        loop = asyncio.get_running_loop()
        serving = loop.create_task(executor.serve(**self.serve_options))
        ready = asyncio.ensure_future(executor.wait_until_ready())
        try:
            await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done() and not serving.done():
                self._alive = True
                await self._notify()
            try:
                await serving
            except faults.WorkerCrash:
                return True
            return False
        finally:
            self._alive = False
            ready.cancel()
            if not serving.done():
                serving.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(serving, 10)

    def _fresh_executor(self) -> Stent:
        """A new ``Stent`` like the client: same backend, clock, registry and settings, and
        no in-memory state."""
        c = self.client
        return Stent(
            c.backend, serializer=c.serializer,
            notification_backend=self._bus.endpoint() if self._bus is not None else None,
            poll_min_interval=c.poll_min_interval, poll_max_interval=c.poll_max_interval,
            poll_backoff_factor=c.poll_backoff_factor, function_registry=c.registry,
            metrics=c.metrics, clock=c.clock, tracer_provider=c.tracer_provider,
            max_payload_bytes=c.max_payload_bytes, max_crash_recoveries=c.max_crash_recoveries,
            durable_asyncio_sleep=c.durable_asyncio_sleep,
        )

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def _wait(self, done: Callable[[], bool], timeout: float) -> None:
        assert self._changed is not None
        task = self._task

        def finished() -> bool:
            return done() or (task is not None and task.done())

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(finished), timeout)

"""``FakeClock``: a controllable clock for the engine, so tests never sleep for real."""

from __future__ import annotations

import asyncio
import heapq
import importlib
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from stent.durations import parse_duration


def system_time_available() -> bool:
    """Whether ``time-machine`` is installed, so that a ``FakeClock`` can move
    ``datetime.now()`` and ``time.time()`` for user code."""
    try:
        importlib.import_module("time_machine")
    except ImportError:
        return False
    return True


class FakeClock:
    """A clock that moves only when told to (or, with ``auto_advance``, when nothing else
    happens).

    The engine marks its sleeps: a *poll* only looks again later, every other sleep (a
    heartbeat, a timer a worker knows about) matters; and it *hints* every time something
    becomes due in storage (timers, retries, delayed dispatches, lease expiries). When the
    clock jumps ahead it stops at each sleep that matters and each hinted time, waking polls
    only there, so a 30-day sleep costs a handful of wake-ups rather than millions of polls.

    With ``system_time=True`` the clock also drives a ``time-machine`` traveller, so that
    ``datetime.now()``, ``datetime.utcnow()``, ``time.time()`` and friends in user code read
    the fake time (frozen between moves; ``time.monotonic()`` and the event loop are left
    alone). ``now()`` stays the source of truth: the traveller is moved to it at every jump.
    Call :meth:`stop` to put the real time back.

    Args:
        start: the initial time (aware; default 2030-01-01 UTC).
        auto_advance: jump to the next due time whenever the program has gone quiet (no clock
            reads or sleeps for ``quiet_period`` seconds of real time).
        quiet_period: real seconds of quiet before an automatic jump.
        system_time: also move ``datetime.now()``/``time.time()`` (needs ``time-machine``;
            ``ImportError`` naming it otherwise).
    """

    def __init__(
        self, start: datetime | None = None, *, auto_advance: bool = False,
        quiet_period: float = 0.005, system_time: bool = False,
    ) -> None:
        self._start = (start or datetime(2030, 1, 1, tzinfo=UTC)).astimezone(UTC)
        self._elapsed = 0.0
        #: (due, seq, is_poll, future)
        self._sleepers: list[tuple[float, int, bool, asyncio.Future[None]]] = []
        self._hints: list[float] = []
        self._seq = itertools.count()
        self._activity = 0
        self._busy_probes: list[Callable[[], bool]] = []
        self._driver: asyncio.Task[None] | None = None
        #: how many ``advance`` calls are running: the auto-advance driver waits for them
        self._advancing = 0
        self._traveller: Any = None
        self._coordinates: Any = None
        self.quiet_period = quiet_period
        self._auto = False
        self.auto_advance = auto_advance
        if system_time:
            self.start_system_time()

    # -- the Clock protocol ----------------------------------------------------------------------
    def now(self) -> datetime:
        self._activity += 1
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        self._activity += 1
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        await self._sleep(seconds, poll=False)

    async def poll_sleep(self, seconds: float) -> None:
        """A sleep that only looks again later; jumps may wake it late."""
        await self._sleep(seconds, poll=True)

    def hint(self, at: datetime) -> None:
        """Something becomes due at ``at``: a jump ahead stops there."""
        due = (at.astimezone(UTC) - self._start).total_seconds()
        if due > self._elapsed:
            heapq.heappush(self._hints, due)

    async def _sleep(self, seconds: float, *, poll: bool) -> None:
        self._activity += 1
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._seq), poll, fut))
        self._ensure_driver()
        await fut

    # -- control ------------------------------------------------------------------------------------
    @property
    def auto_advance(self) -> bool:
        """Whether the clock jumps to the next due time when everything is idle."""
        return self._auto

    @auto_advance.setter
    def auto_advance(self, value: bool) -> None:
        self._auto = bool(value)
        if self._auto:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return
            self._ensure_driver()

    def _prune(self) -> None:
        self._sleepers = [s for s in self._sleepers if not s[3].done()]
        heapq.heapify(self._sleepers)
        while self._hints and self._hints[0] <= self._elapsed:
            heapq.heappop(self._hints)

    def _next_stop(self, *, include_polls: bool) -> float | None:
        """The next time that matters: a non-poll sleeper or a hint (or a poll, if asked)."""
        self._prune()
        candidates = [due for due, _, poll, _ in self._sleepers if include_polls or not poll]
        if self._hints:
            candidates.append(self._hints[0])
        return min(candidates) if candidates else None

    def next_due(self) -> float | None:
        """Seconds from now to the next time that matters, or None."""
        stop = self._next_stop(include_polls=False)
        return None if stop is None else max(0.0, stop - self._elapsed)

    async def advance(self, duration: object) -> None:
        """Move time forward by ``duration``, stopping at every time that matters in that span
        in order and letting its consequences run before moving on.

        Every timer, retry backoff, delayed dispatch and lease expiry due in the span fires at
        its own time: code woken at a stop reads ``now()`` equal to that stop, and what it
        schedules inside the span fires in the same call.

        Args:
            duration: a ``timedelta``, seconds, or a duration string (``"30d"``, ``"1h30m"``).
        """
        target = self._elapsed + parse_duration(duration).total_seconds()
        self._advancing += 1
        try:
            await self._settle()
            while True:
                stop = self._next_stop(include_polls=False)
                if stop is None or stop > target:
                    break
                self._jump_to(stop)
                await self._settle()
            self._jump_to(target)
            await self._settle()
        finally:
            self._advancing -= 1

    def _jump_to(self, when: float) -> None:
        self._elapsed = max(self._elapsed, when)
        if self._coordinates is not None:
            self._coordinates.move_to(self._start + timedelta(seconds=self._elapsed))
        while self._hints and self._hints[0] <= self._elapsed:
            heapq.heappop(self._hints)
        keep = []
        for entry in self._sleepers:
            if entry[0] <= self._elapsed:
                if not entry[3].done():
                    entry[3].set_result(None)
            else:
                keep.append(entry)
        heapq.heapify(keep)
        self._sleepers = keep

    def watch_busy(self, probe: Callable[[], bool]) -> None:
        """Also count the program as busy while ``probe()`` is true (a backend with calls in
        flight: a database round trip can outlast the quiet period)."""
        self._busy_probes.append(probe)

    def _busy(self) -> bool:
        return any(probe() for probe in self._busy_probes)

    async def _settle(self) -> None:
        """Let woken code run until the program goes quiet."""
        for _ in range(1000):
            before = self._activity
            for _ in range(20):
                await asyncio.sleep(0)
            await asyncio.sleep(self.quiet_period)
            if self._activity == before and not self._busy():
                return

    def _ensure_driver(self) -> None:
        if not self._auto:
            return
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(self._drive())

    async def _drive(self) -> None:
        """The auto-advance loop: when nothing has touched the clock for a quiet period and
        someone sleeps, jump to the next time that matters (or the next poll if nothing
        else is pending)."""
        loop = asyncio.get_running_loop()
        while self._auto:
            before = self._activity
            await asyncio.sleep(self.quiet_period)
            if self._activity != before or self._advancing or self._busy():
                continue
            # Other callbacks ready to run mean the program is not idle, only late (a loaded
            # machine descheduled it past the quiet period): let them run, then look again.
            if len(getattr(loop, "_ready", ())) > 0:
                continue
            for _ in range(3):
                await asyncio.sleep(0)
            if self._activity != before or self._busy():
                continue
            stop = self._next_stop(include_polls=False)
            if stop is None:
                stop = self._next_stop(include_polls=True)
            if stop is not None:
                self._jump_to(stop)

    # -- datetime.now() and time.time() ---------------------------------------------------------
    @property
    def system_time(self) -> bool:
        """Whether this clock is moving ``datetime.now()``/``time.time()`` right now."""
        return self._coordinates is not None

    def start_system_time(self) -> None:
        """Make ``datetime.now()``, ``time.time()`` and friends read this clock (frozen
        between moves) until :meth:`stop`.

        Raises:
            ImportError: ``time-machine`` is not installed.
        """
        if self._coordinates is not None:
            return
        try:
            time_machine = importlib.import_module("time_machine")
        except ImportError as exc:
            raise ImportError(
                "FakeClock(system_time=True) moves datetime.now() and time.time() with "
                "time-machine, which is not installed: pip install time-machine"
            ) from exc
        self._traveller = time_machine.travel(self.now(), tick=False)
        self._coordinates = self._traveller.start()

    def stop_system_time(self) -> None:
        """Give ``datetime.now()``/``time.time()`` back their real values."""
        if self._traveller is not None:
            self._traveller.stop()
        self._traveller = None
        self._coordinates = None

    def stop(self) -> None:
        """Stop auto-advancing, release every sleeper and put the real system time back
        (used at test teardown)."""
        self._auto = False
        if self._driver is not None:
            self._driver.cancel()
        for entry in self._sleepers:
            if not entry[3].done():
                entry[3].cancel()
        self._sleepers.clear()
        self.stop_system_time()

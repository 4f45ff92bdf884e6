"""``FakeClock``: a controllable clock for the engine, so tests never sleep for real."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta

from stent.durations import parse_duration


class FakeClock:
    """A clock that moves only when told to (or, with ``auto_advance``, when nothing else
    happens).

    Args:
        start: the initial time (aware; default 2030-01-01 UTC).
        auto_advance: jump to the next due sleeper whenever the program has gone quiet (no
            clock reads or sleeps for ``quiet_period`` seconds of real time).
        quiet_period: real seconds of quiet before an automatic jump.
    """

    def __init__(
        self, start: datetime | None = None, *, auto_advance: bool = False,
        quiet_period: float = 0.005,
    ) -> None:
        self._start = (start or datetime(2030, 1, 1, tzinfo=UTC)).astimezone(UTC)
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._activity = 0
        self._driver: asyncio.Task[None] | None = None
        self.quiet_period = quiet_period
        self._auto = False
        self.auto_advance = auto_advance

    # -- the Clock protocol ----------------------------------------------------------------------
    def now(self) -> datetime:
        self._activity += 1
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        self._activity += 1
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        self._activity += 1
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._seq), fut))
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

    def next_due(self) -> float | None:
        """Seconds from now to the earliest pending sleeper, or None."""
        self._prune()
        if not self._sleepers:
            return None
        return max(0.0, self._sleepers[0][0] - self._elapsed)

    async def advance(self, duration: object) -> None:
        """Move time forward by ``duration``, waking every sleeper due in that span in order
        and letting each one's consequences run before moving on."""
        target = self._elapsed + parse_duration(duration).total_seconds()
        await self._settle()
        while True:
            self._prune()
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            due = self._sleepers[0][0]
            self._elapsed = max(self._elapsed, due)
            self._wake_due()
            await self._settle()
        self._elapsed = max(self._elapsed, target)
        await self._settle()

    def _prune(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._elapsed:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    async def _settle(self) -> None:
        """Let woken code run until the program goes quiet."""
        for _ in range(1000):
            before = self._activity
            for _ in range(20):
                await asyncio.sleep(0)
            await asyncio.sleep(self.quiet_period)
            if self._activity == before:
                return

    def _ensure_driver(self) -> None:
        if not self._auto:
            return
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(self._drive())

    async def _drive(self) -> None:
        """The auto-advance loop: when nothing has touched the clock for a quiet period and
        someone sleeps, jump to the earliest sleeper's due time."""
        while self._auto:
            before = self._activity
            await asyncio.sleep(self.quiet_period)
            if self._activity != before:
                continue
            self._prune()
            if not self._sleepers:
                continue
            self._elapsed = max(self._elapsed, self._sleepers[0][0])
            self._wake_due()

    def stop(self) -> None:
        """Stop auto-advancing and release every sleeper (used at test teardown)."""
        self._auto = False
        if self._driver is not None:
            self._driver.cancel()
        for _, _, fut in self._sleepers:
            if not fut.done():
                fut.cancel()
        self._sleepers.clear()

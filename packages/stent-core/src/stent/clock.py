"""The clock seam: every engine timing decision reads ``executor.clock``."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Where the engine gets time from."""

    def now(self) -> datetime:
        """Current time, aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class SystemClock:
    """The real clock, corrected by its measured offset from the database's clock.

    Workers measure the offset when they start and every minute after (SPEC §10), so that a
    machine whose clock is minutes off neither steals leases nor fires timers early.
    """

    def __init__(self) -> None:
        #: seconds to add to this machine's time to get the database's
        self.offset_s = 0.0

    def raw_time(self) -> float:
        """This machine's own time (seconds since the epoch), uncorrected."""
        return time.time()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.raw_time() + self.offset_s, UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def to_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is read as local time (as ``astimezone`` does)."""
    return value.astimezone(UTC)


async def poll_sleep(clock: Clock, seconds: float) -> None:
    """Sleep for a poll: a wait that only exists to look again later.

    A test clock may skip polls when it jumps ahead (it wakes them at the next time that
    matters); the system clock just sleeps.
    """
    fn = getattr(clock, "poll_sleep", None)
    if fn is not None:
        await fn(seconds)
    else:
        await clock.sleep(seconds)


def hint_due(clock: Clock, at: datetime) -> None:
    """Tell a test clock that something becomes due at ``at`` (a timer, a retry, a lease
    expiry), so that jumping ahead stops there. A no-op on the system clock."""
    fn = getattr(clock, "hint", None)
    if fn is not None:
        fn(at)

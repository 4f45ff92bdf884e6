"""Living through Redis outages: capped reconnect backoff and quiet, rate-limited logging.

Losing Redis never stops Stent (the database poll carries on), so an outage is worth one
WARNING when it starts, a reminder at most every 30 seconds while it lasts, and one INFO line
when it ends; never a line per failed attempt.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

#: reconnect delays never exceed this (SPEC §7: at most 5 s apart)
MAX_BACKOFF_S = 5.0
#: at most one WARNING per this many seconds while Redis is unreachable
WARNING_INTERVAL_S = 30.0


class Backoff:
    """Exponential delays with a little jitter, capped.

    Args:
        initial: the first delay, in seconds.
        cap: the largest delay (jitter never takes a delay above it).
        factor: growth per failure.
    """

    def __init__(self, initial: float = 0.1, cap: float = MAX_BACKOFF_S,
                 factor: float = 2.0) -> None:
        self._initial = initial
        self._cap = cap
        self._factor = factor
        self._next = initial

    def next(self) -> float:
        """The delay before the next attempt; each call grows the one after."""
        # jitter, so that a fleet of workers does not reconnect in lockstep after a restart
        delay = min(self._cap, self._next * random.uniform(0.8, 1.2))
        self._next = min(self._cap, self._next * self._factor)
        return delay

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        self._next = self._initial


class OutageLog:
    """Logs the start, the persistence (rate-limited) and the end of outages.

    Several parts of one backend (the subscriber, the publisher) report to the same
    ``OutageLog``, so together they log at most one WARNING per ``interval``.

    Args:
        logger: where to log.
        where: a printable (password-masked) name of the service.
        interval: seconds between two WARNINGs.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, logger: logging.Logger, where: str, *,
                 interval: float = WARNING_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._where = where
        self._interval = interval
        self._clock = clock
        self._last_warning: float | None = None
        self._down: set[str] = set()

    @property
    def down(self) -> frozenset[str]:
        """The parts that failed last time they tried."""
        return frozenset(self._down)

    def failed(self, part: str, reason: str) -> None:
        """``part`` (``"subscriber"``, ``"publisher"``) could not reach Redis."""
        self._down.add(part)
        now = self._clock()
        if self._last_warning is not None and now - self._last_warning < self._interval:
            self._log.debug("Redis %s still failing at %s: %s", part, self._where, reason)
            return
        self._last_warning = now
        self._log.warning(
            "Redis notifications unavailable at %s (%s failed: %s); retrying at most %.0f s "
            "apart, polling the database meanwhile", self._where, part, reason, MAX_BACKOFF_S)

    def recovered(self, part: str) -> None:
        """``part`` reached Redis again: one INFO line if it had failed."""
        if part in self._down:
            self._down.discard(part)
            self._log.info("Redis notifications %s connected again at %s", part, self._where)

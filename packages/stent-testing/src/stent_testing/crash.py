"""Crash injection: make a worker die abruptly at a named point.

The worker drops every coroutine, writes nothing more, and keeps its leases in storage, just
as a process killed with SIGKILL would. Another worker takes the tasks over after their
leases expire and finishes them by replay.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stent import faults

POINTS = faults.POINTS


@dataclass
class _Rule:
    point: str
    step: str | None
    times: int


@dataclass
class CrashPlan:
    """Where workers die. Install with :meth:`install` (the ``crash`` fixture does it)."""

    rules: list[_Rule] = field(default_factory=list)
    crashes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)
    _random: random.Random | None = None
    _rate: float = 0.0

    def at(self, point: str, step: Any = None, times: int = 1) -> CrashPlan:
        """Crash the worker the next ``times`` times it passes ``point`` (for ``step`` only,
        if given: a registered name or a durable function)."""
        if point not in POINTS:
            raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"invalid times {times!r}: expected an int >= 1")
        name = getattr(step, "name", step)
        self.rules.append(_Rule(point, name, times))
        return self

    def random(self, seed: int, rate: float) -> CrashPlan:
        """Crash at each point with probability ``rate``, reproducibly for ``seed``."""
        if not 0 <= rate <= 1:
            raise ValueError(f"invalid rate {rate!r}: expected 0..1")
        self._random = random.Random(seed)
        self._rate = rate
        return self

    def _should_crash(self, point: str, info: dict[str, Any]) -> bool:
        self.hits[point] += 1
        for rule in self.rules:
            if rule.times > 0 and rule.point == point and (
                rule.step is None or rule.step == info.get("step")
            ):
                rule.times -= 1
                return True
        return self._random is not None and self._random.random() < self._rate

    async def hit(self, point: str, **info: Any) -> None:
        self.hit_sync(point, **info)

    def hit_sync(self, point: str, **info: Any) -> None:
        if self._should_crash(point, info):
            self.crashes.append((point, info))
            raise faults.WorkerCrash(f"injected crash at {point} {info}")

    def install(self) -> CrashPlan:
        """Make this the active plan."""
        faults.plan = self
        return self

    def uninstall(self) -> None:
        """Remove it."""
        if faults.plan is self:
            faults.plan = None

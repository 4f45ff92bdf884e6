"""Crash injection: make a worker die abruptly at a named point, and count what ran.

The worker drops every coroutine, writes nothing more, and keeps its leases in storage, just
as a process killed with SIGKILL would. Another worker takes the tasks over after their
leases expire and finishes them by replay. Under the ``stent_worker`` fixture the
replacement starts by itself (see :class:`~stent_testing.supervisor.WorkerSupervisor`).

The plan also watches every fault point it is installed for, so a test can assert how many
times each step body ran (:attr:`CrashPlan.body_runs`) and that no body ran again after its
outcome was recorded (:attr:`CrashPlan.reruns_after_record`).
"""

from __future__ import annotations

import random as _random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stent import faults

if TYPE_CHECKING:
    from stent import Stent

    from .supervisor import WorkerSupervisor

__all__ = ["POINTS", "STEP_POINTS", "CrashPlan"]

POINTS = faults.POINTS
"""Every named crash point (SPEC §11)."""

STEP_POINTS = ("before_step", "after_step_started", "after_step_result", "after_step_recorded")
"""The points passed for one step, which carry its name: ``crash.at(point, step=...)``."""


def _step_name(step: Any) -> str | None:
    """A registered name from a durable function or a name."""
    if step is None:
        return None
    name = getattr(step, "name", step)
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid step {step!r}: expected a durable function or its name")
    return name


@dataclass
class _Rule:
    point: str
    step: str | None
    times: int
    #: armed once a task of this step has recorded its outcome (None: armed from the start)
    after: str | None = None
    armed: bool = True


@dataclass
class CrashPlan:
    """Where workers die, and what ran. Install with :meth:`install` (the ``crash`` fixture
    does it, and links it to the ``stent_worker`` fixture's supervisor).

    Attributes:
        crashes: every injected crash, in order, as ``(point, info)``.
        hits: how many times each point was passed.
        body_runs: how many times each step's body started, by registered name (a workflow's
            body counts once per replay too).
        reruns_after_record: ``(step, task_id)`` of every body that started again after its
            task's outcome had been recorded. Empty whenever replay works.
        auto_restart: under ``stent_worker``, start a new worker as soon as one dies. With
            False, a dead worker stays dead until :meth:`restart`.
    """

    rules: list[_Rule] = field(default_factory=list)
    crashes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)
    body_runs: Counter[str] = field(default_factory=Counter)
    reruns_after_record: list[tuple[str, str]] = field(default_factory=list)
    supervisor: WorkerSupervisor | None = None
    _recorded: set[str] = field(default_factory=set)
    _seed: int | str | None = None
    _rate: float = 0.0
    _random_points: frozenset[str] = frozenset()
    _random_limit: int | None = None
    _random_crashes: int = 0
    _occurrences: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    _auto_restart: bool = True

    # -- arranging crashes ---------------------------------------------------------------------
    def at(self, point: str, step: Any = None, times: int = 1, *, after: Any = None) -> CrashPlan:
        """Crash the worker the next ``times`` times it passes ``point``.

        Args:
            point: one of :data:`POINTS`.
            step: only for this step (a durable function or its registered name); only the
                points of :data:`STEP_POINTS` carry a step.
            times: how many crashes this rule makes.
            after: arm the rule only once a task of this step has recorded its outcome, e.g.
                ``crash.at("during_heartbeat", after=reserve)`` dies at the first heartbeat
                after ``reserve`` completed.

        Returns:
            This plan, for chaining.
        """
        if point not in POINTS:
            raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"invalid times {times!r}: expected an int >= 1")
        name = _step_name(step)
        if name is not None and point not in STEP_POINTS:
            raise ValueError(
                f"crash point {point!r} is not passed for a step, so step={name!r} would never "
                f"match; use after={name!r} to arm it once that step has completed"
            )
        armed_by = _step_name(after)
        self.rules.append(_Rule(point, name, times, armed_by, armed=armed_by is None))
        return self

    def random(
        self, seed: int | str, rate: float, *, points: Any = None, limit: int | None = None,
    ) -> CrashPlan:
        """Crash at each point passed with probability ``rate``, reproducibly for ``seed``.

        Each decision is a pure function of (seed, point, step, how many times that point was
        passed for that step), so it does not depend on how concurrent work interleaves.

        Args:
            seed: the seed.
            rate: probability of a crash at each point passed, 0..1.
            points: restrict to these points (default: all of :data:`POINTS`).
            limit: at most this many random crashes in all.

        Returns:
            This plan, for chaining.
        """
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ValueError(f"invalid rate {rate!r}: expected a number in 0..1")
        chosen = frozenset(POINTS if points is None else points)
        unknown = sorted(chosen - set(POINTS))
        if unknown:
            raise ValueError(f"unknown crash point(s) {unknown}; known: {', '.join(POINTS)}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise ValueError(f"invalid limit {limit!r}: expected an int >= 0")
        self._seed = seed
        self._rate = float(rate)
        self._random_points = chosen
        self._random_limit = limit
        self._random_crashes = 0
        self._occurrences.clear()
        return self

    @property
    def auto_restart(self) -> bool:
        """Whether the supervised worker is replaced as soon as it dies."""
        return self._auto_restart

    @auto_restart.setter
    def auto_restart(self, value: bool) -> None:
        self._auto_restart = bool(value)
        if self.supervisor is not None:
            self.supervisor.auto_restart = self._auto_restart

    def attach(self, supervisor: WorkerSupervisor) -> None:
        """Restart workers through ``supervisor`` (the plugin does this for ``stent_worker``)."""
        self.supervisor = supervisor
        supervisor.auto_restart = self._auto_restart

    async def restart(self) -> Stent:
        """Bring a new worker after a crash, and move the clock past the dead worker's leases.

        Without an automatic restart this starts the replacement; with one, it waits until
        the replacement is ready. If no worker died since the last restart, the current one is
        killed abruptly first. A ``FakeClock`` is then advanced by one lease duration, so the
        tasks the dead worker held become claimable.

        Returns:
            The executor whose worker serves now.

        Raises:
            RuntimeError: no supervised worker (use the ``stent_worker`` fixture, or
                :meth:`attach` a ``WorkerSupervisor``).
        """
        if self.supervisor is None:
            raise RuntimeError(
                "crash.restart() needs a supervised worker: use the stent_worker fixture (or "
                "attach a stent_testing.WorkerSupervisor to this plan)"
            )
        executor = await self.supervisor.restart()
        advance = getattr(executor.clock, "advance", None)
        if advance is not None:
            await advance(self.supervisor.lease.total_seconds() + 1e-3)
        return executor

    # -- the fault plan protocol ------------------------------------------------------------
    async def hit(self, point: str, **info: Any) -> None:
        """Pass ``point`` (called by the engine); raises ``WorkerCrash`` to crash."""
        self.hit_sync(point, **info)

    def hit_sync(self, point: str, **info: Any) -> None:
        """Pass ``point`` from synchronous engine code."""
        step = info.get("step")
        task_id = info.get("task_id")
        self.hits[point] += 1
        if point == "after_step_recorded" and task_id is not None:
            self._recorded.add(task_id)  # the write is done, whether or not we die now
        crash = self._should_crash(point, step)
        if point == "after_step_recorded" and step is not None:
            for rule in self.rules:
                if not rule.armed and rule.after == step:
                    rule.armed = True
        if crash:
            self.crashes.append((point, dict(info)))
            raise faults.WorkerCrash(f"injected crash at {point} {info}")
        if point == "before_step" and step is not None:
            self.body_runs[step] += 1
            if task_id in self._recorded:
                self.reruns_after_record.append((step, task_id))

    def _should_crash(self, point: str, step: str | None) -> bool:
        for rule in self.rules:
            if (rule.times > 0 and rule.armed and rule.point == point
                    and (rule.step is None or rule.step == step)):
                rule.times -= 1
                return True
        if self._seed is None or point not in self._random_points:
            return False
        if self._random_limit is not None and self._random_crashes >= self._random_limit:
            return False
        self._occurrences[(point, step)] += 1
        n = self._occurrences[(point, step)]
        draw = _random.Random(f"{self._seed}:{point}:{step}:{n}").random()
        if draw < self._rate:
            self._random_crashes += 1
            return True
        return False

    # -- installing ---------------------------------------------------------------------------
    def install(self) -> CrashPlan:
        """Make this the active plan."""
        faults.plan = self
        return self

    def uninstall(self) -> None:
        """Remove it."""
        if faults.plan is self:
            faults.plan = None

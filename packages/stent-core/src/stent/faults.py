"""Named fault points. A no-op unless the testing kit installs a plan.

Production code pays one module-attribute check per point. The testing kit's crash injection
(``stent_testing.crash``) installs a :class:`FaultPlan` whose ``hit`` may raise
:class:`WorkerCrash` to make a worker die abruptly at that point.
"""

from __future__ import annotations

from typing import Any, Protocol

POINTS = (
    "before_step",
    "after_step_started",
    "after_step_result",
    "after_step_recorded",
    "during_heartbeat",
    "before_claim",
    "before_claim_commit",
)


class WorkerCrash(BaseException):
    """Raised by a fault plan to kill a worker at a fault point (tests only).

    It derives from ``BaseException`` so that user code's ``except Exception`` cannot swallow
    a simulated death.
    """


class FaultPlan(Protocol):
    """What the testing kit installs."""

    async def hit(self, point: str, **info: Any) -> None:
        """Called at ``point``; may raise :class:`WorkerCrash`."""
        ...


plan: FaultPlan | None = None


async def hit(point: str, **info: Any) -> None:
    """Pass fault point ``point``."""
    if plan is not None:
        await plan.hit(point, **info)


def plan_hit_sync(point: str, **info: Any) -> None:
    """Pass a fault point from synchronous code (the plan's ``hit_sync``, if it has one)."""
    if plan is not None:
        hook = getattr(plan, "hit_sync", None)
        if hook is not None:
            hook(point, **info)

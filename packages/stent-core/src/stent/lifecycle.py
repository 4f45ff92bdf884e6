"""``WorkerLifecycle``: a handle on one worker's state, for readiness and graceful drain."""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

_counter = itertools.count(1)


@dataclass(eq=False)
class WorkerLifecycle:
    """State of one worker: ``created``, ``ready``, ``draining``, ``stopped``.

    Attributes:
        name: a readable name (default ``worker-<pid>-<n>``).
        state: the current state.
        active_tasks: tasks this worker holds right now.
    """

    name: str = field(default_factory=lambda: f"worker-{os.getpid()}-{next(_counter)}")
    state: str = "created"
    active_tasks: int = 0
    worker_id: str | None = None
    _drain: asyncio.Event | None = field(default=None, repr=False)
    _drain_requested: bool = field(default=False, repr=False)

    @property
    def draining(self) -> bool:
        """Whether a drain was requested."""
        return self._drain_requested

    @property
    def ready(self) -> bool:
        """Whether the worker is claiming work."""
        return self.state == "ready"

    def request_drain(self) -> None:
        """Ask the worker to stop claiming, finish or suspend its tasks, and stop."""
        self._drain_requested = True
        if self.state == "ready":
            self.state = "draining"
        if self._drain is not None:
            self._drain.set()

    def drain_event(self) -> asyncio.Event:
        """The event set when a drain is requested (bound to the running loop)."""
        if self._drain is None:
            self._drain = asyncio.Event()
            if self._drain_requested:
                self._drain.set()
        return self._drain

    def status(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "name": self.name,
            "worker_id": self.worker_id,
            "state": self.state,
            "active_tasks": self.active_tasks,
        }

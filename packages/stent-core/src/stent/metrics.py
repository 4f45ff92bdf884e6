"""Metrics hooks. Subclass ``MetricsRecorder`` and override what you need.

Every callback takes keyword arguments; a recorder that raises never breaks a worker.
"""

from __future__ import annotations


class MetricsRecorder:
    """No-op base class of metrics recorders (see the deployment guide's Prometheus example)."""

    def task_claimed(self, queue: str | None, step_name: str, kind: str) -> None:
        """A worker claimed a task."""

    def task_completed(self, queue: str | None, step_name: str, kind: str, duration_s: float) -> None:
        """A task's body returned."""

    def task_failed(
        self, queue: str | None, step_name: str, kind: str, reason: str, retrying: bool
    ) -> None:
        """A task's attempt failed (``retrying`` says whether another attempt follows)."""

    def dead_lettered(self, queue: str | None, step_name: str, kind: str, reason: str) -> None:
        """A task was dead-lettered."""

    def lease_renewed(self, task_id: str, success: bool) -> None:
        """A heartbeat renewed (or failed to renew) a task's lease."""

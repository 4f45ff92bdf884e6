"""Metrics hooks. Subclass ``MetricsRecorder`` and override what you need.

Every callback takes keyword arguments; a recorder that raises never breaks a worker.
"""

from __future__ import annotations

from typing import Any


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

    def queue_depth(self, queue: str | None, depth: int) -> None:
        """Pending tasks in ``queue``, sampled by workers at each heartbeat."""

    def worker_state(self, worker: str, active_tasks: int, ready: bool) -> None:
        """A worker's held tasks and readiness, reported at each heartbeat."""


class PrometheusMetrics(MetricsRecorder):
    """A ready ``MetricsRecorder`` on ``prometheus-client`` (``pip install
    'stent-core[prometheus]'``), with the deployment guide's metric names plus queue-depth and
    worker gauges. ``serve(health_port=...)`` serves it at ``/metrics``.

    Args:
        registry: where to register the metrics. A private ``CollectorRegistry`` by default;
            pass ``prometheus_client.REGISTRY`` to expose them with ``start_http_server``.
    """

    def __init__(self, registry: Any = None) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise ImportError(
                "PrometheusMetrics needs prometheus-client: pip install 'stent-core[prometheus]'"
            ) from exc
        self._prom = prom
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        labels = ["queue", "step_name", "kind"]
        r = self.registry
        self.tasks_claimed = prom.Counter(
            "stent_tasks_claimed", "Total tasks claimed", labels, registry=r)
        self.tasks_completed = prom.Counter(
            "stent_tasks_completed", "Total tasks completed", labels, registry=r)
        self.task_duration = prom.Histogram(
            "stent_task_duration_seconds", "Task execution duration", labels, registry=r)
        self.tasks_failed = prom.Counter(
            "stent_tasks_failed", "Total tasks failed", [*labels, "retrying"], registry=r)
        self.dead_letters = prom.Counter(
            "stent_dead_letters", "Total tasks dead-lettered", labels, registry=r)
        self.lease_renewals = prom.Counter(
            "stent_lease_renewals", "Lease renewals by outcome", ["success"], registry=r)
        self.queue_depth_gauge = prom.Gauge(
            "stent_queue_depth", "Pending tasks per queue", ["queue"], registry=r)
        self.worker_active = prom.Gauge(
            "stent_worker_active_tasks", "Tasks held by a worker", ["worker"], registry=r)
        self.worker_ready = prom.Gauge(
            "stent_worker_ready", "1 while a worker claims work", ["worker"], registry=r)

    def task_claimed(self, queue: str | None, step_name: str, kind: str) -> None:
        self.tasks_claimed.labels(queue=queue or "", step_name=step_name, kind=kind).inc()

    def task_completed(self, queue: str | None, step_name: str, kind: str, duration_s: float) -> None:
        self.tasks_completed.labels(queue=queue or "", step_name=step_name, kind=kind).inc()
        self.task_duration.labels(queue=queue or "", step_name=step_name, kind=kind).observe(
            duration_s)

    def task_failed(
        self, queue: str | None, step_name: str, kind: str, reason: str, retrying: bool
    ) -> None:
        self.tasks_failed.labels(queue=queue or "", step_name=step_name, kind=kind,
                                 retrying=str(retrying)).inc()

    def dead_lettered(self, queue: str | None, step_name: str, kind: str, reason: str) -> None:
        self.dead_letters.labels(queue=queue or "", step_name=step_name, kind=kind).inc()

    def lease_renewed(self, task_id: str, success: bool) -> None:
        self.lease_renewals.labels(success=str(success)).inc()

    def queue_depth(self, queue: str | None, depth: int) -> None:
        self.queue_depth_gauge.labels(queue=queue or "").set(depth)

    def worker_state(self, worker: str, active_tasks: int, ready: bool) -> None:
        self.worker_active.labels(worker=worker).set(active_tasks)
        self.worker_ready.labels(worker=worker).set(1 if ready else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of these metrics."""
        return bytes(self._prom.generate_latest(self.registry))

"""Testing kit for Stent: pytest plugin, in-memory backend, fake clock, crash injection and
the replay checker."""

from __future__ import annotations

from .clock import FakeClock, system_time_available
from .crash import POINTS, CrashPlan
from .memory import InMemoryBackend
from .notifications import LocalNotifications
from .recording import record_history
from .replay import HistoryDivergence, ReplayResult, load_history, replay, replay_async
from .supervisor import WorkerSupervisor

__all__ = [
    "POINTS",
    "CrashPlan",
    "FakeClock",
    "HistoryDivergence",
    "InMemoryBackend",
    "LocalNotifications",
    "ReplayResult",
    "WorkerSupervisor",
    "load_history",
    "record_history",
    "replay",
    "replay_async",
    "system_time_available",
]

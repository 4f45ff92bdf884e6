"""Testing kit for Stent: in-memory backend, fake clock, crash injection, pytest plugin."""

from __future__ import annotations

from .clock import FakeClock
from .crash import CrashPlan
from .memory import InMemoryBackend

__all__ = ["CrashPlan", "FakeClock", "InMemoryBackend"]

"""Stent: durable functions for Python (under construction)."""
from __future__ import annotations

from .errors import *  # noqa: F403
from .result import Result
from .retry import RetryPolicy

__all__ = ["Result", "RetryPolicy"]

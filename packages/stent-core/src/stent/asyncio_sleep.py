"""Opt-in promotion of ``asyncio.sleep`` to durable sleeps (``durable_asyncio_sleep=True``).

Nothing is patched unless an executor is built with that option. Then ``asyncio.sleep`` is
wrapped once, process-wide, and the wrapper promotes a sleep only when all of these hold: it is
made inside a running task of an executor that opted in, it is at least one second, and it is
made directly by the durable function's own body (not by a library it calls, nor by Stent's
own machinery). Everything else goes to the original ``asyncio.sleep`` unchanged.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

_original_sleep = asyncio.sleep
_installed = False

PROMOTE_AT_LEAST_S = 1.0


async def _promoting_sleep(delay: float, result: T = None) -> T:  # type: ignore[assignment]
    from .context import current_task_context

    ctx = current_task_context()
    if (
        ctx is not None
        and ctx.executor.durable_asyncio_sleep
        and isinstance(delay, int | float)
        and delay >= PROMOTE_AT_LEAST_S
    ):
        fn = ctx.executor.registry.find(ctx.task.step_name)
        caller = sys._getframe(1)
        if fn is not None and caller.f_code is getattr(fn.fn, "__code__", None):
            from .steps import durable_sleep

            await durable_sleep(ctx, timedelta(seconds=delay))
            return result
    return await _original_sleep(delay, result)


def install() -> None:
    """Wrap ``asyncio.sleep`` (idempotent)."""
    global _installed
    if not _installed:
        asyncio.sleep = _promoting_sleep
        _installed = True


def uninstall() -> None:
    """Put the original ``asyncio.sleep`` back."""
    global _installed
    if _installed:
        asyncio.sleep = _original_sleep
        _installed = False


def original_sleep() -> Any:
    """The unwrapped ``asyncio.sleep``."""
    return _original_sleep

"""``record_history``: run a workflow to its end on a throwaway backend and keep its history.

This is how golden histories for replay tests are made without a database: the workflow runs
on an in-memory backend with an auto-advancing ``FakeClock`` (so durable sleeps cost
nothing), and the history is exported exactly as ``Stent.history`` exports it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from stent import Stent
from stent.backend import Backend
from stent.registry import FunctionRegistry
from stent.serialization import Serializer

from .clock import FakeClock
from .memory import InMemoryBackend

__all__ = ["record_history"]


async def record_history(
    fn: Any,
    /,
    *args: Any,
    execution_id: str | None = None,
    backend: Backend | None = None,
    serializer: str | Serializer = "json",
    registry: FunctionRegistry | None = None,
    timeout: float = 60.0,
    **kwargs: Any,
) -> dict[str, Any]:
    """Dispatch ``fn(*args, **kwargs)``, serve it until it finishes, and return its history.

    Args:
        fn: a registered durable function (or its name).
        *args: its arguments.
        execution_id: a fixed execution id (keeps regenerated golden files stable).
        backend: where to run it (default: a new ``InMemoryBackend``, discarded after).
        serializer: the executor's serializer.
        registry: where the executor finds functions (default ``Stent.default_registry``).
        timeout: real seconds to wait for the execution.
        **kwargs: its keyword arguments.

    Returns:
        The history, as ``Stent.history`` gives it (JSON-able).
    """
    own = backend is None
    store: Backend = InMemoryBackend() if backend is None else backend
    await store.init_db()
    clock = FakeClock(auto_advance=True)
    executor = Stent(store, clock=clock, serializer=serializer, function_registry=registry)
    worker = asyncio.get_running_loop().create_task(executor.serve(poll_interval=0.05))
    try:
        await asyncio.wait_for(executor.wait_until_ready(), timeout)
        eid = await executor.dispatch(fn, *args, execution_id=execution_id, **kwargs)
        await asyncio.wait_for(executor.wait_for(eid), timeout)
        return await executor.history(eid)
    finally:
        worker.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(worker, 10)
        await executor.shutdown()
        clock.stop()
        if own:
            await store.close()

"""Small helpers shared by the engine tests."""

from __future__ import annotations

import asyncio
from typing import Any

from stent import Stent


async def start_worker(executor: Stent, **kw: Any) -> asyncio.Task[None]:
    """Start ``executor.serve(**kw)`` in the background and wait until it is ready."""
    kw.setdefault("poll_interval", 1.0)
    task = asyncio.get_running_loop().create_task(executor.serve(**kw))
    ready = asyncio.ensure_future(executor.wait_until_ready())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    return task


async def stop_worker(executor: Stent, task: asyncio.Task[None]) -> None:
    """Cancel a worker started with :func:`start_worker` and shut the executor down."""
    task.cancel()
    try:
        await asyncio.wait_for(task, 10)
    except BaseException:
        pass
    await executor.shutdown()

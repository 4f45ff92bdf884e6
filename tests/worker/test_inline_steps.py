"""Inline steps (run before they are written) under lease trouble."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from stent import BackendError, Result, Stent
from stent.backend import Backend

from ..engine.helpers import start_worker, stop_worker

seen: list[str] = []
started = {"e": asyncio.Event()}


@pytest.fixture(autouse=True)
def _reset() -> None:
    seen.clear()
    started["e"] = asyncio.Event()


class FailsOnce:
    """Wraps a backend: the first insert of a finished step fails like a dropped connection."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create_step(self, parent_id: str, parent_fence: int, new: Any, now: Any,
                          lease: Any = None) -> Any:
        if new.state == "completed" and not self.failed:
            self.failed = True
            raise BackendError("connection reset (injected, once)")
        return await self.inner.create_step(parent_id, parent_fence, new, now, lease)


@Stent.durable(name="tests.inline.slow_child")
async def slow_child() -> str:
    await asyncio.sleep(0.4)  # longer than the 0.3 s lease: its caller's heartbeats cover it
    return "child-result"


@Stent.durable(name="tests.inline.parent")
async def parent() -> str:
    return await slow_child()


@Stent.durable(name="tests.inline.leaf")
async def leaf() -> int:
    return 1


@Stent.durable(name="tests.inline.compensating")
async def compensating() -> int:
    started["e"].set()
    await asyncio.sleep(0.2)
    try:
        return await leaf()
    except Exception as exc:  # a broad handler, as in saga compensation
        seen.append(f"{type(exc).__name__}: {exc}")
        return -1


@Stent.durable(name="tests.inline.outer")
async def outer() -> int:
    return await compensating()


async def test_a_failed_final_insert_of_a_long_inline_step_is_retried_on_its_callers_lease(
    stent_backend: Backend,
) -> None:
    backend = FailsOnce(stent_backend)
    ex = Stent(backend)  # type: ignore[arg-type]
    w = await start_worker(ex, lease_duration=0.3, heartbeat_interval=0.05, poll_interval=0.05)
    eid = await ex.dispatch(parent)
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok("child-result")
    assert backend.failed
    await stop_worker(ex, w)


async def test_user_code_never_sees_the_internal_lease_error(stent_backend: Backend) -> None:
    ex = Stent(stent_backend)
    w = await start_worker(ex, poll_interval=0.05)
    eid = await ex.dispatch(outer)
    await asyncio.wait_for(started["e"].wait(), 5)
    task = await stent_backend.get_task(eid)  # an operator gives the caller back mid-step
    assert task is not None
    task.state = "pending"
    task.worker_id = None
    task.lease_expires_at = None
    await stent_backend.update_task(task)
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok(1)
    assert seen == [], f"user code saw {seen}"
    await stop_worker(ex, w)

"""Windows where a task or a worker is cancelled while a write is in flight: the write may
still commit, and nothing may be left stuck because of it."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from stent import Result, Stent
from stent.backend import Backend

from ..engine.helpers import start_worker, stop_worker

runs: Counter[str] = Counter()
child_release: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()
    child_release["e"] = asyncio.Event()


class GatedBackend:
    """Wraps a backend; calls to gated methods wait for their gate before they run (as a
    write queued behind a lock would), and still run if their caller is cancelled."""

    def __init__(self, inner: Backend, *gated: str) -> None:
        self.inner = inner
        self.gates = {name: asyncio.Event() for name in gated}
        self.waiting = {name: asyncio.Event() for name in gated}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.gates:
            return attr

        async def run(*args: Any, **kwargs: Any) -> Any:
            self.waiting[name].set()
            await self.gates[name].wait()
            return await attr(*args, **kwargs)

        async def gated(*args: Any, **kwargs: Any) -> Any:
            # Like a write handed to a database connection's queue: cancelling the caller
            # does not take it back; it still runs and commits.
            return await asyncio.shield(asyncio.ensure_future(run(*args, **kwargs)))

        return gated


@Stent.durable(name="tests.windows.child")
async def child() -> int:
    runs["child"] += 1
    await child_release["e"].wait()
    return 7


@Stent.durable(name="tests.windows.parent")
async def parent() -> int:
    runs["parent"] += 1
    return await child() + 1


@Stent.durable(name="tests.windows.child_stored", max_concurrent=1000)
async def child_stored() -> int:
    runs["child"] += 1
    await child_release["e"].wait()
    return 7


@Stent.durable(name="tests.windows.parent_stored")
async def parent_stored() -> int:
    """Its step is capped, so it is written (and claimed) through storage before it runs."""
    runs["parent"] += 1
    return await child_stored() + 1


@Stent.durable(name="tests.windows.job")
async def job(x: int) -> int:
    return x


async def test_child_finishing_while_its_parent_is_being_suspended_still_wakes_it(
    stent_backend: Backend,
) -> None:
    gated = GatedBackend(stent_backend, "suspend_task")
    ex = Stent(gated)  # type: ignore[arg-type]
    w = await start_worker(ex, poll_interval=0.05)
    eid = await ex.dispatch(parent)
    while runs["child"] == 0:
        await asyncio.sleep(0.005)
    ex.request_worker_drain()  # the parent waits, so it is suspended
    await asyncio.wait_for(gated.waiting["suspend_task"].wait(), 5)
    child_release["e"].set()  # the child completes before the suspension is written
    for _ in range(500):
        kids = [t for t in await stent_backend.list_tasks_for_execution(eid) if t.parent_id]
        if kids and kids[0].state == "completed":
            break
        await asyncio.sleep(0.005)
    gated.gates["suspend_task"].set()
    await asyncio.wait_for(w, 10)
    root = await stent_backend.get_task(eid)
    assert root is not None and root.state == "pending", "the finished child must wake it"
    fresh = Stent(stent_backend)
    w2 = await start_worker(fresh, poll_interval=0.05)
    assert await asyncio.wait_for(fresh.wait_for(eid), 10) == Result.Ok(8)
    assert runs["child"] == 1
    await stop_worker(fresh, w2)


async def test_step_insert_that_commits_after_its_caller_was_cancelled_is_not_orphaned(
    stent_backend: Backend,
) -> None:
    gated = GatedBackend(stent_backend, "create_step")
    ex = Stent(gated)  # type: ignore[arg-type]
    w = await start_worker(ex, poll_interval=0.05, lease_duration=timedelta(minutes=5))
    eid = await ex.dispatch(parent_stored)
    await asyncio.wait_for(gated.waiting["create_step"].wait(), 5)
    ex.request_worker_drain()  # cancels the parent while its step insert is queued
    await asyncio.sleep(0.05)
    gated.gates["create_step"].set()  # the insert commits, born leased to this worker
    child_release["e"].set()
    await asyncio.wait_for(w, 10)
    kids = [t for t in await stent_backend.list_tasks_for_execution(eid) if t.parent_id]
    assert len(kids) == 1
    assert kids[0].state in ("completed", "pending"), kids[0]
    assert kids[0].worker_id is None and kids[0].lease_expires_at is None
    fresh = Stent(stent_backend)
    w2 = await start_worker(fresh, poll_interval=0.05)
    assert await asyncio.wait_for(fresh.wait_for(eid), 10) == Result.Ok(8)
    assert all(t.crash_count == 0 for t in await stent_backend.list_tasks_for_execution(eid))
    await stop_worker(fresh, w2)


async def test_claim_that_commits_after_serve_was_cancelled_gives_its_tasks_back(
    stent_backend: Backend,
) -> None:
    gated = GatedBackend(stent_backend, "claim")
    ex = Stent(gated)  # type: ignore[arg-type]
    ids = [await ex.dispatch(job, i) for i in range(3)]
    w = asyncio.get_running_loop().create_task(ex.serve(poll_interval=0.05))
    await asyncio.wait_for(gated.waiting["claim"].wait(), 5)
    w.cancel()
    await asyncio.sleep(0.01)
    gated.gates["claim"].set()  # the claim commits after its worker stopped
    await asyncio.gather(w, return_exceptions=True)
    for _ in range(200):
        states = [(await stent_backend.get_task(i)) for i in ids]
        if all(t is not None and t.state == "pending" for t in states):
            break
        await asyncio.sleep(0.01)
    for t in states:
        assert t is not None and t.state == "pending" and t.worker_id is None


async def test_wait_until_ready_waits_again_once_every_worker_has_stopped(
    stent_backend: Backend,
) -> None:
    ex = Stent(stent_backend)
    w = await start_worker(ex, poll_interval=0.05)
    ex.request_worker_drain()
    await asyncio.wait_for(w, 5)
    waiter = asyncio.ensure_future(ex.wait_until_ready())
    await asyncio.sleep(0.05)
    assert not waiter.done(), "no worker runs: wait_until_ready must keep waiting"
    w2 = asyncio.get_running_loop().create_task(ex.serve(poll_interval=0.05))
    await asyncio.wait_for(waiter, 5)
    await stop_worker(ex, w2)

"""Worker behaviour: slots, suspension, drain, lifecycle and status (SPEC §4 "Waiting", §7)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
from stent import Result, Stent
from stent.backend import Backend
from stent_testing import FakeClock

from ..engine.helpers import start_worker, stop_worker

runs: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()


@Stent.durable
async def leaf(x: int) -> int:
    runs["leaf"] += 1
    return x + 1


@Stent.durable
async def middle(x: int) -> int:
    return await leaf(await leaf(x))


@Stent.durable
async def top(x: int) -> int:
    return await middle(await middle(x))


@Stent.durable
async def long_sleeper(days: int) -> str:
    runs["sleeper_body"] += 1
    await Stent.sleep(timedelta(days=days))
    runs["after_sleep"] += 1
    return "woke"


async def test_a_waiting_task_gives_its_slot_to_the_steps_it_awaits(stent_backend: Backend) -> None:
    """With one slot, a three-level workflow can only finish if waiting parents free it."""
    ex = Stent(stent_backend)
    w = await start_worker(ex, max_concurrency=1)
    eid = await ex.dispatch(top, 0)
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok(4)
    await stop_worker(ex, w)


async def test_many_workflows_share_few_slots(stent_backend: Backend) -> None:
    ex = Stent(stent_backend)
    w = await start_worker(ex, max_concurrency=2)
    ids = [await ex.dispatch(middle, i) for i in range(30)]
    results = await asyncio.wait_for(asyncio.gather(*(ex.wait_for(i) for i in ids)), 30)
    assert [r.unwrap() for r in results] == [i + 2 for i in range(30)]
    assert runs["leaf"] == 60
    await stop_worker(ex, w)


async def test_a_long_sleep_suspends_the_task_and_resumes_it_by_replay(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex, suspend_after=60)
    eid = await ex.dispatch(long_sleeper, 30)
    await clock.advance(61)
    root = await stent_backend.get_task(eid)
    assert root is not None
    assert (root.state, root.worker_id, root.lease_expires_at) == ("waiting", None, None)
    assert ex.worker_status_overview()["workers"][0]["active_tasks"] == 0
    await clock.advance(timedelta(days=30))
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok("woke")
    assert runs["sleeper_body"] == 2, "resumed by replay: the body ran again from the top"
    assert runs["after_sleep"] == 1
    await stop_worker(ex, w)


async def test_drain_suspends_waiting_tasks_releases_leases_and_stops(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    lifecycle = ex.create_worker_lifecycle(name="w-drain")
    w = await start_worker(ex, lifecycle=lifecycle)
    assert ex.worker_status_overview()["ready"] is True
    eid = await ex.dispatch(long_sleeper, 1)
    await clock.advance(1)
    ex.request_worker_drain(lifecycle)
    await asyncio.wait_for(w, 10)  # serve() returns by itself
    assert lifecycle.state == "stopped"
    status = ex.worker_status_overview()
    assert status["ready"] is False and status["draining"] is False
    root = await stent_backend.get_task(eid)
    assert root is not None and root.state == "waiting" and root.worker_id is None
    # another worker finishes it once the timer is due
    other = Stent(stent_backend, clock=clock)
    w2 = await start_worker(other)
    await clock.advance(timedelta(days=1, seconds=2))
    assert await asyncio.wait_for(other.wait_for(eid), 10) == Result.Ok("woke")
    await stop_worker(other, w2)
    await ex.shutdown()


async def test_worker_status_overview_and_wait_until_ready(stent_backend: Backend) -> None:
    ex = Stent(stent_backend)
    assert ex.worker_status_overview() == {"ready": False, "draining": False, "workers": []}
    lc = ex.create_worker_lifecycle(name="w1")
    task = asyncio.get_running_loop().create_task(ex.serve(lifecycle=lc, poll_interval=0.05))
    await asyncio.wait_for(ex.wait_until_ready(), 5)
    status = ex.worker_status_overview()
    assert status["ready"] is True
    assert status["workers"][0]["name"] == "w1"
    assert status["workers"][0]["state"] == "ready"
    ex.request_worker_drain()
    await asyncio.wait_for(task, 5)
    assert ex.worker_status_overview()["workers"][0]["state"] == "stopped"


async def test_cancelling_serve_gives_running_tasks_back(stent_backend: Backend) -> None:
    release = asyncio.Event()

    @Stent.durable(name="tests.worker.blocker")
    async def blocker() -> str:
        await release.wait()
        return "done"

    ex = Stent(stent_backend)
    w = await start_worker(ex)
    eid = await ex.dispatch(blocker)
    for _ in range(100):
        t = await stent_backend.get_task(eid)
        if t is not None and t.state == "running":
            break
        await asyncio.sleep(0.01)
    w.cancel()
    await asyncio.wait({w}, timeout=10)
    # A claim in flight when serve() was cancelled (committed, its result not yet back)
    # gives its tasks back in the background, just after serve() returns.
    for _ in range(200):
        root = await stent_backend.get_task(eid)
        if root is not None and root.state != "running":
            break
        await asyncio.sleep(0.01)
    assert root is not None and root.state == "pending" and root.worker_id is None
    release.set()
    w2 = await start_worker(ex)
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok("done")
    await stop_worker(ex, w2)


@pytest.mark.parametrize(
    ("kw", "text"),
    [({"max_concurrency": 0}, "max_concurrency"), ({"lease_duration": "0s"}, "lease_duration"),
     ({"queues": ["bad queue"]}, "queue"), ({"tags": ["a b"]}, "tag"),
     ({"poll_interval": -1}, "poll_interval")],
)
async def test_serve_refuses_bad_options(stent_backend: Backend, kw: dict[str, object], text: str) -> None:
    ex = Stent(stent_backend)
    with pytest.raises(ValueError, match=text):
        await ex.serve(**kw)


async def test_bootstrap_serves_until_the_block_ends(stent_backend: Backend) -> None:
    async with Stent.bootstrap(stent_backend, serve=True, poll_interval=0.05) as ex:
        assert Stent.current() is ex
        assert await middle(1) == 3
    assert Stent.current() is None


async def test_workers_clean_up_finished_executions_after_the_retention_period(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex, cleanup_interval=3600, retention_period=timedelta(days=1))
    eid = await ex.dispatch(middle, 1)
    await clock.advance(1)
    assert (await ex.state_of(eid)).state == "completed"
    await clock.advance(timedelta(hours=23))
    assert await stent_backend.count_executions() == 1, "cleaned up before the retention period"
    await clock.advance(timedelta(hours=2))
    assert await stent_backend.count_executions() == 0
    assert await stent_backend.count_tasks() == 0
    await stop_worker(ex, w)

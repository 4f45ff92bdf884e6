"""Routing and limits (SPEC §2, §7): queues, tags, priorities, ``max_concurrent`` across
workers (from recorded intervals), and no starvation behind ineligible tasks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from stent import Result, Stent
from stent.backend import Backend
from stent_testing import FakeClock

from .helpers import start_worker, stop_worker

order: list[str] = []
intervals: list[tuple[float, float, str]] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    order.clear()
    intervals.clear()


@Stent.durable
async def note(label: str) -> str:
    order.append(label)
    return label


@Stent.durable(queue="billing")
async def billing_job(label: str) -> str:
    order.append(label)
    return label


@Stent.durable(tags=["gpu"])
async def gpu_job(label: str) -> str:
    order.append(label)
    return label


@Stent.durable(tags=["arm"])
async def arm_job(label: str) -> str:
    order.append(label)
    return label


@Stent.durable(priority=7)
async def urgent(label: str) -> str:
    order.append(label)
    return label


@Stent.durable(max_concurrent=2)
async def capped(i: int) -> int:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.sleep(0.02)  # real time: overlapping runs would show in the intervals
    intervals.append((start, loop.time(), Stent.context().task_id))
    return i


@Stent.durable
async def fans_out_capped(n: int) -> list[int]:
    return list(await asyncio.gather(*(capped(i) for i in range(n))))


def _max_overlap(spans: list[tuple[float, float, str]]) -> int:
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


async def _done(ex: Stent, ids: list[str]) -> list[Result[Any]]:
    return [await asyncio.wait_for(ex.wait_for(i), 30) for i in ids]


async def test_a_worker_claims_only_its_queues(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    billing = await ex.dispatch(billing_job, "b")
    default = await ex.dispatch(note, "d")
    elsewhere = await ex.dispatch(note, "e", queue="reports")
    w = await start_worker(ex, queues=["billing"])
    try:
        assert await asyncio.wait_for(ex.wait_for(billing), 10) == Result.Ok("b")
        await asyncio.sleep(0.1)
        assert order == ["b"]
        assert (await ex.state_of(default)).state == "pending"
        assert (await ex.state_of(elsewhere)).state == "pending"
    finally:
        await stop_worker(ex, w)
    ex2 = Stent(stent_backend, clock=clock)
    w2 = await start_worker(ex2)  # queues=None: every queue
    try:
        await _done(ex2, [default, elsewhere])
        assert sorted(order) == ["b", "d", "e"]
    finally:
        await stop_worker(ex2, w2)


async def test_tag_rule_untagged_and_shared_tags_only(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    ids = [await ex.dispatch(gpu_job, "gpu"), await ex.dispatch(arm_job, "arm"),
           await ex.dispatch(note, "plain"), await ex.dispatch(note, "gpu2", tags=["gpu", "x"])]
    w = await start_worker(ex, tags=["gpu"])
    try:
        await _done(ex, [ids[0], ids[2], ids[3]])
        await asyncio.sleep(0.1)
        assert sorted(order) == ["gpu", "gpu2", "plain"]
        assert (await ex.state_of(ids[1])).state == "pending"
    finally:
        await stop_worker(ex, w)
    ex2 = Stent(stent_backend, clock=clock)
    w2 = await start_worker(ex2)  # no tags: claims everything
    try:
        await _done(ex2, [ids[1]])
    finally:
        await stop_worker(ex2, w2)


async def test_higher_priority_is_claimed_first_and_none_keeps_the_functions(
    stent_backend: Backend,
) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    ids = [await ex.dispatch(note, "low"), await ex.dispatch(urgent, "fn-priority-7"),
           await ex.dispatch(note, "explicit-9", priority=9),
           await ex.dispatch(urgent, "urgent-lowered", priority=-1),
           await ex.dispatch(note, "mid", priority=3)]
    assert (await ex.state_of(ids[1])).priority == 7
    w = await start_worker(ex, max_concurrency=1)
    try:
        await _done(ex, ids)
        assert order == ["explicit-9", "fn-priority-7", "mid", "low", "urgent-lowered"]
    finally:
        await stop_worker(ex, w)


async def test_an_ineligible_head_never_starves_eligible_tasks(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    for i in range(60):  # high priority, but in a queue this worker does not serve
        await ex.dispatch(note, f"other-{i}", queue="other", priority=100)
    mine = [await ex.dispatch(note, f"mine-{i}") for i in range(3)]
    w = await start_worker(ex, queues=["billing", "default"], max_concurrency=2)
    try:
        # the default queue is spelled None in a worker's list; "default" is a named queue
        await asyncio.sleep(0.2)
        assert order == []
    finally:
        await stop_worker(ex, w)
    ex2 = Stent(stent_backend, clock=clock)
    w2 = await start_worker(ex2, queues=["billing", None], max_concurrency=2)
    try:
        await _done(ex2, mine)
        assert sorted(order) == ["mine-0", "mine-1", "mine-2"]
    finally:
        await stop_worker(ex2, w2)


async def test_max_concurrent_is_never_exceeded_across_workers(stent_backend: Backend) -> None:
    # three executors share no notification bus: they learn of each other's work by
    # polling, so the clock must move (auto-advance) for the polls to happen
    clock = FakeClock(auto_advance=True)
    executors = [Stent(stent_backend, clock=clock) for _ in range(3)]
    workers = [await start_worker(e, max_concurrency=8, poll_interval=0.05) for e in executors]
    try:
        ids = [await executors[0].dispatch(capped, i) for i in range(24)]
        ids.append(await executors[1].dispatch(fans_out_capped, 12))
        results = [await asyncio.wait_for(executors[0].wait_for(i), 60) for i in ids]
        assert all(r.ok for r in results)
        assert len(intervals) == 36
        assert _max_overlap(intervals) <= 2, _max_overlap(intervals)
        assert _max_overlap(intervals) == 2  # the cap is used, not serialised to one
    finally:
        for e, w in zip(executors, workers, strict=True):
            await stop_worker(e, w)
        clock.stop()

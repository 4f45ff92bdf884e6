"""PostgresBackend under the real engine: several workers (each with its own pool, as separate
processes would have) on one schema, the system clock, LISTEN/NOTIFY wake-ups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from stent import Result, Stent
from stent_postgres import PostgresBackend
from stent_testing.pg import create_test_backend, dispose_test_backend, postgres_test_dsn

CAP = 3
running = {"now": 0, "peak": 0, "calls": 0}


@Stent.durable(name="pgtest.rate_limited", max_concurrent=CAP)
async def rate_limited(i: int) -> int:
    running["now"] += 1
    running["calls"] += 1
    running["peak"] = max(running["peak"], running["now"])
    try:
        await asyncio.sleep(0.01)
        return i * i
    finally:
        running["now"] -= 1


@Stent.durable(name="pgtest.fan_out")
async def fan_out(n: int) -> int:
    squares = await asyncio.gather(*(rate_limited(i) for i in range(n)))
    return sum(squares)


@pytest.fixture
async def executors() -> AsyncIterator[list[Stent]]:
    first = await create_test_backend(min_pool_size=1, max_pool_size=4)
    backends = [first] + [
        PostgresBackend(postgres_test_dsn(), schema=first.schema, min_pool_size=1,
                        max_pool_size=4) for _ in range(2)
    ]
    executors = [Stent(b) for b in backends]
    serving: list[asyncio.Task[None]] = []
    try:
        for ex in executors:
            serving.append(asyncio.ensure_future(ex.serve(max_concurrency=8,
                                                          poll_interval=0.2)))
            await asyncio.wait_for(ex.wait_until_ready(), 10)
        yield executors
    finally:
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)
        for ex in executors:
            await asyncio.wait_for(ex.shutdown(), 10)
        for b in backends[1:]:
            await b.close()
        await dispose_test_backend(first)


async def test_capped_fan_out_across_three_workers_never_exceeds_the_cap(
    executors: list[Stent],
) -> None:
    running.update(now=0, peak=0, calls=0)
    ids = [await executors[i % 3].dispatch(fan_out, 12) for i in range(4)]
    results: list[Result[Any]] = [
        await asyncio.wait_for(executors[0].wait_for(eid), 60) for eid in ids
    ]
    assert results == [Result.Ok(sum(i * i for i in range(12)))] * 4
    assert running["calls"] == 48
    assert 1 <= running["peak"] <= CAP
    backend = executors[0].backend
    assert await backend.count_tasks(state="running") == 0
    assert await backend.count_executions(state="completed") == 4

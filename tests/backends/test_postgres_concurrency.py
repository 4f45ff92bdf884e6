"""PostgresBackend under real concurrency: several pools (as several worker processes would
have) racing on one schema. max_concurrent is exact and atomic, its counter never drifts,
wake-ups are never lost, and racing statements never deadlock."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from stent.records import Lease, TaskRecord
from stent_postgres import PostgresBackend
from stent_testing.conformance.builders import (
    T0,
    at,
    claim_filter,
    new_execution,
    new_task,
)
from stent_testing.memory import InMemoryBackend
from stent_testing.pg import create_test_backend, dispose_test_backend, postgres_test_dsn

CAPPED = "app:capped"
EVERYTHING = claim_filter({"app:work", "app:other", CAPPED})


@pytest.fixture
async def backend() -> AsyncIterator[PostgresBackend]:
    b = await create_test_backend(min_pool_size=1, max_pool_size=6)
    yield b
    await dispose_test_backend(b)


@pytest.fixture
async def workers(backend: PostgresBackend) -> AsyncIterator[list[PostgresBackend]]:
    """Eight more backends on the same schema, each with its own pool (a worker process)."""
    others = [PostgresBackend(postgres_test_dsn(), schema=backend.schema, min_pool_size=1,
                              max_pool_size=3) for _ in range(8)]
    yield others
    for b in others:
        await b.close()


async def fetch(backend: PostgresBackend, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(postgres_test_dsn(),
                                 server_settings={"search_path": f'"{backend.schema}"'})
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def assert_counters_exact(backend: PostgresBackend) -> dict[str, int]:
    """Every counter equals the number of its function's running slot holders."""
    rows = await fetch(backend, """
        SELECT c.step_name, c.holders,
               (SELECT count(*) FROM stent_tasks AS t
                WHERE t.step_name = c.step_name AND t.slot AND t.state = 'running') AS actual
        FROM stent_concurrency AS c""")
    assert [(r["step_name"], r["holders"]) for r in rows] == [
        (r["step_name"], r["actual"]) for r in rows]
    return {r["step_name"]: r["holders"] for r in rows}


async def dispatch_capped(backend: PostgresBackend, n: int, cap: int, **fields: Any) -> list[str]:
    news = [new_execution(name=CAPPED, max_concurrent=cap, **fields) for _ in range(n)]
    await asyncio.gather(*(backend.create_execution(new, T0) for new in news))
    return [new.root.id for new in news]


# -- max_concurrent ---------------------------------------------------------------------------------
async def test_racing_claimers_never_exceed_the_cap(
    backend: PostgresBackend, workers: list[PostgresBackend]
) -> None:
    for round_ in range(5):
        await dispatch_capped(backend, 12, cap=3)
        batches = await asyncio.gather(*(
            w.claim(f"w-{i}", EVERYTHING, 2, at(round_), at(round_ + 60))
            for i, w in enumerate(workers)
        ))
        claimed = [t for batch in batches for t in batch]
        assert len(claimed) == 3, [len(b) for b in batches]
        assert await assert_counters_exact(backend) == {CAPPED: 3}
        await asyncio.gather(*(workers[0].complete_task(t.id, t.fence, b"1", at(round_))
                               for t in claimed))
        assert await assert_counters_exact(backend) == {CAPPED: 0}
        # the rest of this round's tasks are left pending: take them all, three at a time
        while await backend.count_tasks(state="pending"):
            got = await backend.claim("w", EVERYTHING, 10, at(round_), at(round_ + 60))
            assert 0 < len(got) <= 3
            for t in got:
                await backend.complete_task(t.id, t.fence, b"1", at(round_))


async def test_a_live_count_sampled_during_a_storm_never_exceeds_the_cap(
    backend: PostgresBackend, workers: list[PostgresBackend]
) -> None:
    cap = 4
    await dispatch_capped(backend, 80, cap=cap)
    await asyncio.gather(*(backend.create_execution(new_execution(), T0) for _ in range(40)))
    stop = asyncio.Event()
    samples: list[int] = []

    async def monitor() -> None:
        conn = await asyncpg.connect(postgres_test_dsn(),
                                     server_settings={"search_path": f'"{backend.schema}"'})
        try:
            while not stop.is_set():
                samples.append(await conn.fetchval(
                    "SELECT count(*) FROM stent_tasks WHERE step_name = $1 "
                    "AND state = 'running'", CAPPED))
        finally:
            await conn.close()

    async def worker(i: int, b: PostgresBackend) -> int:
        done = 0
        while True:
            got = await b.claim(f"w-{i}", EVERYTHING, 3, at(1), at(600))
            if not got:
                if not await b.count_tasks(state="pending"):
                    return done
                await asyncio.sleep(0.001)
                continue
            await asyncio.sleep(0.002)  # "work"
            for t in got:
                assert await b.complete_task(t.id, t.fence, b"1", at(2))
                done += 1

    watcher = asyncio.ensure_future(monitor())
    counts = await asyncio.gather(*(worker(i, b) for i, b in enumerate(workers)))
    stop.set()
    await watcher
    assert sum(counts) == 120
    assert samples and max(samples) <= cap
    assert await assert_counters_exact(backend) == {CAPPED: 0}


async def test_a_function_at_its_cap_does_not_hold_back_work_behind_it(
    backend: PostgresBackend,
) -> None:
    await dispatch_capped(backend, 30, cap=1, priority=9)
    behind = [new_execution() for _ in range(3)]
    for new in behind:
        await backend.create_execution(new, T0)
    first = await backend.claim("w", EVERYTHING, 1, at(1), at(60))
    assert [t.step_name for t in first] == [CAPPED]
    for _ in range(3):
        (got,) = await backend.claim("w", EVERYTHING, 1, at(1), at(60))
        assert got.step_name == "app:work"
    assert await backend.claim("w", EVERYTHING, 5, at(1), at(60)) == []


async def _scenario(b: Any) -> list[Any]:
    """Leases that expire, late heartbeats, reclaims: what a capped function's claims see."""
    log: list[Any] = []

    def ids(tasks: list[TaskRecord]) -> list[tuple[str, int]]:
        return [(t.step_name, t.fence) for t in tasks]

    only = {q: claim_filter({CAPPED}, queues=[q]) for q in ("qa", "qb", "qc")}
    for q in ("qa", "qb", "qc"):
        await b.create_execution(new_execution(name=CAPPED, max_concurrent=1, queue=q), T0)
    (a,) = await b.claim("w1", only["qa"], 5, at(0), at(60))
    log.append(ids(await b.claim("w2", only["qb"], 5, at(30), at(90))))  # A live: nothing
    (bb,) = await b.claim("w2", only["qb"], 5, at(61), at(121))  # A expired: B runs
    log.append(await b.renew_leases("w1", [(a.id, a.fence)], at(200)))  # late heartbeat
    log.append(ids(await b.claim("w3", only["qc"], 5, at(62), at(122))))  # A and B: nothing
    log.append(await b.complete_task(a.id, a.fence, b"a", at(63)))
    log.append(ids(await b.claim("w3", only["qc"], 5, at(64), at(124))))  # B still: nothing
    log.append(await b.release_task(bb.id, bb.fence, at(65)))
    log.append(ids(await b.claim("w3", only["qc"], 5, at(66), at(126))))  # C runs now
    log.append(ids(await b.claim("w2", only["qb"], 5, at(67), at(127))))  # B back: at cap
    return log


async def test_expired_leases_stop_counting_as_in_the_reference_backend(
    backend: PostgresBackend,
) -> None:
    expected = await _scenario(InMemoryBackend())
    assert await _scenario(backend) == expected
    await assert_counters_exact(backend)


async def test_every_transition_keeps_the_counter_exact(backend: PostgresBackend) -> None:
    await dispatch_capped(backend, 1, cap=5)
    parent = (await backend.claim("w", EVERYTHING, 1, at(0), at(60)))[0]
    assert await assert_counters_exact(backend) == {CAPPED: 1}
    steps = []
    for seq in range(4):  # born running under a lease: each holds a slot at once
        child, _ = await backend.create_step(
            parent.id, parent.fence,
            new_task(parent_id=parent.id, seq=seq, name=CAPPED, max_concurrent=5), at(1),
            Lease("w", at(60)))
        steps.append(child)
    assert await assert_counters_exact(backend) == {CAPPED: 5}
    await backend.complete_task(steps[0].id, steps[0].fence, b"1", at(2))
    await backend.fail_task(steps[1].id, steps[1].fence, b"e", at(2), "exhausted")
    await backend.retry_task(steps[2].id, steps[2].fence, b"e", at(3), at(2))
    await backend.release_task(steps[3].id, steps[3].fence, at(2))
    assert await assert_counters_exact(backend) == {CAPPED: 1}
    await backend.suspend_task(parent.id, parent.fence, [steps[2].id], at(2))
    assert await assert_counters_exact(backend) == {CAPPED: 0}
    again = await backend.claim("w", EVERYTHING, 10, at(3), at(60))
    assert {t.id for t in again} == {steps[2].id, steps[3].id}
    assert await assert_counters_exact(backend) == {CAPPED: 2}
    record = await backend.get_task(steps[2].id)
    assert record is not None
    record.state = "pending"  # the deployment guide's manual reclaim
    record.worker_id = None
    await backend.update_task(record)
    assert await assert_counters_exact(backend) == {CAPPED: 1}
    record.state, record.worker_id, record.lease_expires_at = "running", "ops", at(90)
    await backend.update_task(record)
    assert await assert_counters_exact(backend) == {CAPPED: 2}
    # Finish the root with children still running: they are cancelled, their slots given back.
    resumed = await backend.claim("w", EVERYTHING, 10, at(4), at(60))
    root = next(t for t in resumed if t.id == parent.id)
    await backend.complete_task(root.id, root.fence, b"done", at(5))
    assert await assert_counters_exact(backend) == {CAPPED: 0}
    # An operator makes one run again in the finished execution: cleanup deletes every row,
    # slots too.
    record.state, record.worker_id, record.lease_expires_at = "running", "ops", at(90)
    await backend.update_task(record)
    assert await assert_counters_exact(backend) == {CAPPED: 1}
    assert await backend.cleanup_executions(at(10)) == 1
    assert await assert_counters_exact(backend) == {CAPPED: 0}


# -- wake-ups and locks -------------------------------------------------------------------------------
async def _parent_with_children(
    b: PostgresBackend, n: int
) -> tuple[TaskRecord, list[TaskRecord]]:
    new = new_execution(queue=f"q-{T0.timestamp()}-{id(b)}-{n}-{asyncio.get_running_loop().time()}")
    await b.create_execution(new, T0)
    (parent,) = await b.claim("w", claim_filter(queues=[new.queue]), 1, at(0), at(600))
    assert parent.id == new.root.id
    children = [
        (await b.create_step(parent.id, parent.fence, new_task(parent_id=parent.id, seq=i),
                             at(0), Lease("w", at(600))))[0]
        for i in range(n)
    ]
    return parent, children


async def test_a_child_finishing_while_its_parent_suspends_always_wakes_it(
    backend: PostgresBackend, workers: list[PostgresBackend]
) -> None:
    for i in range(60):
        parent, (child,) = await _parent_with_children(backend, 1)
        finish: Callable[..., Awaitable[bool]] = (
            workers[0].complete_task if i % 2 else
            lambda tid, fence, out, now: workers[0].fail_task(tid, fence, out, now, None))
        suspended, finished = await asyncio.gather(
            workers[1].suspend_task(parent.id, parent.fence, [child.id], at(1)),
            finish(child.id, child.fence, b"1", at(1)),
        )
        assert suspended and finished
        stored = await backend.get_task(parent.id)
        assert stored is not None and stored.state == "pending", f"lost wake-up at {i}"


async def test_siblings_finishing_at_once_wake_their_parent_without_deadlock(
    backend: PostgresBackend, workers: list[PostgresBackend]
) -> None:
    for _ in range(5):
        parent, children = await _parent_with_children(backend, 24)
        assert await backend.suspend_task(parent.id, parent.fence,
                                          [c.id for c in children], at(1))
        results = await asyncio.gather(*(
            workers[i % len(workers)].complete_task(c.id, c.fence, b"1", at(2))
            for i, c in enumerate(children)
        ))
        assert all(results)
        stored = await backend.get_task(parent.id)
        assert stored is not None and stored.state == "pending"
        (again,) = await backend.claim("w", claim_filter(queues=[parent.queue]), 1, at(3),
                                       at(600))
        assert again.id == parent.id


async def test_heartbeats_suspensions_and_completions_racing_never_deadlock(
    backend: PostgresBackend, workers: list[PostgresBackend]
) -> None:
    # One worker's heartbeat renews a parent and its children while the parent suspends and
    # the children finish: locks are taken in one order (ancestors first), so no deadlock
    # (PostgreSQL would abort one statement after deadlock_timeout, a BackendError here).
    for _ in range(25):
        parent, children = await _parent_with_children(backend, 4)
        held = [(t.id, t.fence) for t in (parent, *children)]
        results = await asyncio.gather(
            workers[0].renew_leases("w", held, at(700)),
            workers[1].suspend_task(parent.id, parent.fence, [c.id for c in children], at(1)),
            *(workers[2 + i].complete_task(c.id, c.fence, b"1", at(1))
              for i, c in enumerate(children)),
            workers[7].renew_leases("w", list(reversed(held)), at(800)),
        )
        assert all(r is not None for r in results)
        stored = await backend.get_task(parent.id)
        assert stored is not None and stored.state == "pending"


async def test_racing_step_inserts_from_many_pools_create_one_row(
    backend: PostgresBackend, workers: list[PostgresBackend]
) -> None:
    parent, _ = await _parent_with_children(backend, 0)
    attempts = [dataclasses.replace(new_task(parent_id=parent.id, seq=7), args=f"[{i}]".encode())
                for i in range(len(workers) * 3)]
    results = await asyncio.gather(*(
        workers[i % len(workers)].create_step(parent.id, parent.fence, step, at(1))
        for i, step in enumerate(attempts)
    ))
    assert sum(created for _, created in results) == 1
    assert len({row.id for row, _ in results}) == 1

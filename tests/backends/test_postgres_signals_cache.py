"""PostgresBackend's signals, cache keys, effects, batches and maintenance leases under real
concurrency: several pools (as several worker processes would have) racing on one schema.

A signal is never lost and never delivered twice, whatever the order in which a wait and a
send reach the server; one cache key has exactly one owner; racing statements never
deadlock (a deadlock would be retried by the backend and logged: the tests watch that log);
and each of these operations is one statement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
from stent.records import ExecutionEffect, NewExecution, TaskRecord
from stent_postgres import PostgresBackend
from stent_testing.conformance.arrange import signal_step, start
from stent_testing.conformance.builders import T0, at, claim_filter, new_execution, new_task
from stent_testing.pg import create_test_backend, dispose_test_backend, postgres_test_dsn

T = TypeVar("T")


@pytest.fixture
async def backend() -> AsyncIterator[PostgresBackend]:
    b = await create_test_backend(min_pool_size=1, max_pool_size=6)
    yield b
    await dispose_test_backend(b)


@pytest.fixture
async def workers(backend: PostgresBackend) -> AsyncIterator[list[PostgresBackend]]:
    """Four more backends on the same schema, each with its own pool (a worker process)."""
    others = [PostgresBackend(postgres_test_dsn(), schema=backend.schema, min_pool_size=1,
                              max_pool_size=4) for _ in range(4)]
    yield others
    for b in others:
        await b.close()


@pytest.fixture
def no_retries(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if any statement had to be retried (a deadlock or serialization
    failure, which the backend retries silently)."""
    caplog.set_level(logging.INFO, logger="stent.postgres")
    yield None
    retried = [r.getMessage() for r in caplog.records
               if r.name == "stent.postgres" and "retrying" in r.getMessage()]
    assert retried == []


async def fetch(backend: PostgresBackend, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(postgres_test_dsn(),
                                 server_settings={"search_path": f'"{backend.schema}"'})
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def start_many(
    backend: PostgresBackend, n: int, now: datetime
) -> list[tuple[NewExecution, TaskRecord]]:
    """Dispatch ``n`` executions and claim their root tasks (held by "worker-1")."""
    news = [new_execution() for _ in range(n)]
    await asyncio.gather(*(backend.create_execution(new, now) for new in news))
    roots = {t.id: t for t in await backend.claim("worker-1", claim_filter(), n, now,
                                                   now + timedelta(seconds=60))}
    assert len(roots) == n
    return [(new, roots[new.root.id]) for new in news]


async def together(first: Awaitable[T], second: Awaitable[Any]) -> tuple[T, Any]:
    """Run two calls at once (on different pools: both reach the server together)."""
    a, b = await asyncio.gather(first, second)
    return a, b


# -- signals ----------------------------------------------------------------------------------------
async def test_a_signal_racing_a_new_wait_is_consumed_exactly_once(
    backend: PostgresBackend, workers: list[PostgresBackend], no_retries: None
) -> None:
    sender = workers[0]
    for round_ in range(12):
        started = await start_many(backend, 10, at(round_))
        payloads = [f'"{round_}-{i}"'.encode() for i in range(len(started))]
        waits = [signal_step(root, 0) for _, root in started]
        results = await asyncio.gather(*(
            together(
                workers[1 + i % 3].create_signal_wait(root.id, root.fence, wait, "go",
                                                      at(round_)),
                sender.send_signal(new.id, "go", payload, at(round_)),
            )
            for i, ((new, root), wait, payload) in enumerate(
                zip(started, waits, payloads, strict=True))
        ))
        for ((row, created), served), wait, payload in zip(results, waits, payloads,
                                                           strict=True):
            assert created and row.id == wait.id
            if served == "":
                # the signal came first and was kept: the wait was born with it
                assert (row.state, row.result) == ("completed", payload)
            else:
                # the wait came first: the signal was delivered to it
                assert served == wait.id
                assert (row.state, row.result) == ("waiting", None)
            stored = await backend.get_task(wait.id)
            assert stored is not None
            assert (stored.state, stored.result) == ("completed", payload)
    unconsumed = await fetch(backend, "SELECT count(*) AS n FROM stent_signals "
                                      "WHERE consumed_by IS NULL")
    assert unconsumed[0]["n"] == 0
    assert (await fetch(backend, "SELECT count(*) AS n FROM stent_signal_waiters"))[0]["n"] == 0
    pairs = await fetch(backend, "SELECT consumed_by, count(*) AS n FROM stent_signals "
                                 "GROUP BY consumed_by")
    assert len(pairs) == 12 * 10 and all(r["n"] == 1 for r in pairs)


async def test_many_waits_and_signals_of_one_name_pair_up_exactly(
    backend: PostgresBackend, workers: list[PostgresBackend], no_retries: None
) -> None:
    for round_ in range(4):
        new, root = await start(backend, now=at(round_))
        n = 24
        waits = [signal_step(root, seq) for seq in range(n)]
        payloads = [f"{round_}:{i}".encode() for i in range(n)]
        calls: list[Awaitable[Any]] = []
        for i in range(n):
            calls.append(workers[i % 4].create_signal_wait(root.id, root.fence, waits[i], "n",
                                                           at(round_)))
            calls.append(workers[(i + 1) % 4].send_signal(new.id, "n", payloads[i],
                                                          at(round_)))
        done = await asyncio.gather(*calls)
        born_with = {row.id for row, _ in done[0::2] if row.state == "completed"}
        served = [s for s in done[1::2] if s != ""]
        assert len(served) == len(set(served))
        assert born_with.isdisjoint(served)
        assert born_with | set(served) == {w.id for w in waits}
        got = [await backend.get_task(w.id) for w in waits]
        assert all(t is not None and t.state == "completed" for t in got)
        assert sorted(t.result or b"" for t in got if t is not None) == sorted(payloads)
    unconsumed = await fetch(backend, "SELECT count(*) AS n FROM stent_signals "
                                      "WHERE consumed_by IS NULL")
    assert unconsumed[0]["n"] == 0


async def test_buffered_signals_are_consumed_in_the_order_they_were_sent(
    backend: PostgresBackend, workers: list[PostgresBackend]
) -> None:
    new, root = await start(backend)
    for i in range(10):
        assert await workers[i % 4].send_signal(new.id, "n", str(i).encode(), at(1)) == ""
    for seq in range(10):
        row, _ = await workers[seq % 4].create_signal_wait(
            root.id, root.fence, signal_step(root, seq), "n", at(2))
        assert row.result == str(seq).encode()


async def test_signals_racing_a_cancellation_neither_deadlock_nor_lose_state(
    backend: PostgresBackend, workers: list[PostgresBackend], no_retries: None
) -> None:
    async def race(new: NewExecution, root: TaskRecord, i: int, now: datetime) -> None:
        timeout = now + timedelta(seconds=30) if i % 2 else None  # pending or waiting waits
        wait, _ = await workers[i % 4].create_signal_wait(
            root.id, root.fence, signal_step(root, 0, timeout_at=timeout), "go", now)
        assert await workers[i % 4].suspend_task(root.id, root.fence, [wait.id], now)
        state, served = await together(
            workers[i % 4].cancel_execution(new.id, b'"stop"', now),
            workers[(i + 1) % 4].send_signal(new.id, "go", b'"go"', now),
        )
        assert state == "cancelled"
        stored = await backend.get_task(wait.id)
        assert stored is not None
        if served == wait.id:
            assert (stored.state, stored.result) == ("completed", b'"go"')
        else:
            assert served == "" and stored.state == "cancelled"
        ex = await backend.get_execution(new.id)
        assert ex is not None and ex.state == "cancelled"

    for round_ in range(10):
        started = await start_many(backend, 12, at(round_))
        await asyncio.gather(*(race(new, root, i, at(round_))
                               for i, (new, root) in enumerate(started)))


async def test_a_cancellation_waits_for_a_delivery_in_flight_without_deadlock(
    backend: PostgresBackend,
) -> None:
    # Deterministic: a sender has served a waiting wait (its row locked) and is about to
    # wake the waiting parent when a cancellation starts. The cancellation freezes the wait
    # before it locks anything that waits (stent_freeze_execution), so it queues behind the
    # sender instead of locking the parent first (which would deadlock).
    new, root = await start(backend)
    wait, _ = await backend.create_signal_wait(root.id, root.fence, signal_step(root, 0),
                                               "go", at(1))
    assert await backend.suspend_task(root.id, root.fence, [wait.id], at(1))
    settings = {"search_path": f'"{backend.schema}"'}
    sender = await asyncpg.connect(postgres_test_dsn(), server_settings=settings)
    try:
        tx = sender.transaction()
        await tx.start()
        await sender.execute("UPDATE stent_tasks SET state = 'completed', result = 'go' "
                             "WHERE id = $1", wait.id)
        cancel = asyncio.ensure_future(backend.cancel_execution(new.id, b'"stop"', at(2)))
        await asyncio.sleep(0.3)
        assert not cancel.done()
        await sender.execute("UPDATE stent_tasks SET state = 'pending' "
                             "WHERE id = $1 AND state = 'waiting'", root.id)
        await tx.commit()
        assert await cancel == "cancelled"
    finally:
        await sender.close()
    stored = await backend.get_task(wait.id)
    assert stored is not None and stored.state == "completed"


async def test_a_signal_racing_the_parents_suspension_always_wakes_it(
    backend: PostgresBackend, workers: list[PostgresBackend], no_retries: None
) -> None:
    for round_ in range(25):
        new, root = await start(backend, now=at(round_))
        wait, _ = await backend.create_signal_wait(
            root.id, root.fence, signal_step(root, 0), "go", at(round_))
        suspended, served = await together(
            workers[0].suspend_task(root.id, root.fence, [wait.id], at(round_)),
            workers[1].send_signal(new.id, "go", b"1", at(round_)),
        )
        assert suspended and served == wait.id
        parent = await backend.get_task(root.id)
        assert parent is not None and parent.state == "pending"  # never left waiting
        (again,) = await backend.claim("w", claim_filter(), 1, at(round_), at(round_ + 60))
        assert again.id == root.id
        assert await backend.complete_task(again.id, again.fence, b"1", at(round_))


async def test_a_signal_racing_the_cleanup_of_its_execution_leaves_nothing_behind(
    backend: PostgresBackend, workers: list[PostgresBackend], no_retries: None
) -> None:
    for round_ in range(20):
        new, root = await start(backend, now=at(round_))
        await backend.create_signal_wait(root.id, root.fence, signal_step(root, 0), "a",
                                         at(round_))
        assert await backend.complete_task(root.id, root.fence, b"1", at(round_))
        deleted, served = await together(
            workers[0].cleanup_executions(at(round_ + 1)),
            workers[1].send_signal(new.id, "b", b"late", at(round_)),
        )
        assert deleted == 1 and served in ("", None)
    orphans = await fetch(backend, """
        SELECT (SELECT count(*) FROM stent_signals) + (SELECT count(*) FROM stent_signal_waiters)
               + (SELECT count(*) FROM stent_tasks) AS n""")
    assert orphans[0]["n"] == 0


# -- cache keys -------------------------------------------------------------------------------------
async def test_concurrent_claims_of_one_key_make_exactly_one_owner(
    backend: PostgresBackend, workers: list[PostgresBackend], no_retries: None
) -> None:
    for round_ in range(10):
        tasks = [root for _, root in await start_many(backend, 8, at(round_))]
        key = f"key-{round_}"
        claims = await asyncio.gather(*(
            workers[i % 4].cache_claim(key, t.id, "digest", 60.0, at(round_))
            for i, t in enumerate(tasks)
        ))
        owners = [t for t, c in zip(tasks, claims, strict=True) if c.status == "owner"]
        assert len(owners) == 1, [c.status for c in claims]
        (owner,) = owners
        assert all(c.status == "busy" and c.owner_task_id == owner.id
                   for c in claims if c.status != "owner")
        # the owner completes while the others ask again: each sees busy or the result
        _, again = await together(
            workers[0].complete_task(owner.id, owner.fence, b'"v"', at(round_)),
            asyncio.gather(*(workers[1 + i % 3].cache_claim(key, t.id, "digest", 60.0,
                                                            at(round_))
                             for i, t in enumerate(tasks) if t.id != owner.id)),
        )
        assert {c.status for c in again} <= {"busy", "hit"}
        assert all(c.result == b'"v"' for c in again if c.status == "hit")
        late = await backend.cache_claim(key, tasks[-1].id, "digest", 60.0, at(round_))
        assert (late.status, late.result) == ("hit", b'"v"')


async def test_concurrent_claims_of_an_expired_key_make_exactly_one_owner(
    backend: PostgresBackend, workers: list[PostgresBackend], no_retries: None
) -> None:
    _, first = await start(backend)
    assert (await backend.cache_claim("k", first.id, "d", 1.0, at(1))).status == "owner"
    assert await backend.complete_task(first.id, first.fence, b"old", at(1))
    tasks = [root for _, root in await start_many(backend, 8, at(2))]
    claims, _ = await together(
        asyncio.gather(*(workers[i % 4].cache_claim("k", t.id, "d", 1.0, at(5))
                         for i, t in enumerate(tasks))),
        workers[0].cleanup_cache(at(5)),
    )
    statuses = [c.status for c in claims]
    assert statuses.count("owner") == 1 and statuses.count("busy") == 7, statuses


async def test_completion_stores_the_result_in_one_statement(backend: PostgresBackend) -> None:
    _, owner = await start(backend)
    await backend.cache_claim("k", owner.id, "d", None, at(1))
    before = backend.stats["statements"]
    assert await backend.complete_task(owner.id, owner.fence, b"r", at(2))
    assert backend.stats["statements"] - before == 1
    rows = await fetch(backend, "SELECT task_id, result, expires_at FROM stent_cache")
    assert [(r["task_id"], r["result"], r["expires_at"]) for r in rows] == [
        (owner.id, b"r", None)]


# -- effects, batches, maintenance ------------------------------------------------------------------
async def test_concurrent_increments_from_many_steps_all_count(
    backend: PostgresBackend, workers: list[PostgresBackend], no_retries: None
) -> None:
    new, root = await start(backend)
    children = [new_task(parent_id=root.id, seq=seq) for seq in range(12)]
    await backend.create_steps(root.id, root.fence, children, at(1))
    held: list[TaskRecord] = await backend.claim("w", claim_filter(), 12, at(2), at(60))
    assert len(held) == 12

    async def count(i: int, task: TaskRecord) -> None:
        for seq in range(5):
            step = new_task(parent_id=task.id, seq=seq, name="stent.increment", kind="value",
                            state="completed", result=b"null")
            _, created = await workers[i % 4].record_effect(
                task.id, task.fence, step, ExecutionEffect("increment", "n", delta=seq + 1),
                at(3))
            assert created

    await asyncio.gather(*(count(i, t) for i, t in enumerate(held)))
    ex = await backend.get_execution(new.id)
    assert ex is not None and ex.counters == {"n": 12 * (1 + 2 + 3 + 4 + 5)}


async def test_racing_batches_of_one_parent_create_each_child_once(
    backend: PostgresBackend, workers: list[PostgresBackend], no_retries: None
) -> None:
    _, root = await start(backend)
    batches = [[new_task(parent_id=root.id, seq=seq) for seq in range(20)] for _ in range(4)]
    results = await asyncio.gather(*(
        w.create_steps(root.id, root.fence, batch, at(1))
        for w, batch in zip(workers, batches, strict=True)
    ))
    for seq in range(20):
        rows = {result[seq][0].id for result in results}
        created = [result[seq][1] for result in results]
        assert len(rows) == 1 and created.count(True) == 1
    assert len(await backend.load_steps(root.id, root.attempt)) == 20


async def test_one_maintenance_lease_holder_at_a_time(
    backend: PostgresBackend, workers: list[PostgresBackend], no_retries: None
) -> None:
    for round_ in range(10):
        now = at(100 * round_)
        got = await asyncio.gather(*(
            w.acquire_maintenance("cleanup", f"h{i}", at(100 * round_ + 50), now)
            for i, w in enumerate(workers * 2)
        ))
        assert got.count(True) == 1, got


# -- cost -------------------------------------------------------------------------------------------
async def test_each_new_operation_is_one_statement(backend: PostgresBackend) -> None:
    new, root = await start(backend)

    async def one(call: Awaitable[Any]) -> Any:
        before = backend.stats["statements"], backend.stats["transactions"]
        result = await call
        assert (backend.stats["statements"] - before[0],
                backend.stats["transactions"] - before[1]) == (1, 0)
        return result

    batch = [new_task(parent_id=root.id, seq=seq) for seq in range(5)]
    await one(backend.create_steps(root.id, root.fence, batch, at(1)))
    await one(backend.create_signal_wait(root.id, root.fence, signal_step(root, 5), "s", at(1)))
    await one(backend.send_signal(new.id, "s", b"1", at(2)))
    await one(backend.send_signal(new.id, "s", b"2", at(2)))
    effect = new_task(parent_id=root.id, seq=6, kind="value", state="completed", result=b"0")
    await one(backend.record_effect(root.id, root.fence, effect,
                                    ExecutionEffect("set_state", "k", value_json="[1]"), at(3)))
    await one(backend.cache_claim("k", root.id, "d", None, at(3)))
    await one(backend.cleanup_cache(at(3)))
    await one(backend.acquire_maintenance("m", "h", at(60), at(3)))
    await one(backend.cleanup_executions(at(3), limit=10))
    await one(backend.cleanup_dead_letters(at(3), limit=10))
    assert T0 < at(1)

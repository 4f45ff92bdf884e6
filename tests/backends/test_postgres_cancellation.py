"""PostgresBackend's cancellation and deadlines under real concurrency: several pools (as
several worker processes would have) racing on one schema. A cancelling execution is always
settled, however its tasks stop at once; a cancellation leaves no unstarted task behind and
no claim takes a task of an execution after its cancellation returned; deadlines race
completions cleanly; the max_concurrent counters stay exact on every path that cancels a
slot holder; no statement ever deadlocks; and random sequences of operations, cancellations
among them, match the reference backend."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from stent.errors import LeaseLostError
from stent.records import Lease, TaskRecord
from stent_postgres import PostgresBackend
from stent_postgres._pg_db import MIGRATIONS
from stent_testing.conformance.builders import T0, at, claim_filter, new_execution, new_task
from stent_testing.memory import InMemoryBackend
from stent_testing.pg import (
    create_test_backend,
    dispose_test_backend,
    postgres_test_dsn,
    temporary_schema,
)

from .test_postgres_reference import (
    CAPS,
    _call,
    _check_counters,
    _compare_state,
    _random_operation,
)

CAPPED = "app:capped"
EVERYTHING = claim_filter({"app:work", "app:other", CAPPED})
ERROR = b"cancelled"
TIMEOUT = b"timed-out"


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


@pytest.fixture(autouse=True)
def no_deadlocks(caplog: pytest.LogCaptureFixture) -> Any:
    """Fails the test if any statement had to be retried after a deadlock or a serialization
    failure (PostgresDatabase retries those silently, but for a log line)."""
    caplog.set_level(logging.INFO, logger="stent.postgres")
    yield
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retried == []


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
        FROM stent_concurrency AS c ORDER BY c.step_name""")
    assert [(r["step_name"], r["holders"]) for r in rows] == [
        (r["step_name"], r["actual"]) for r in rows]
    return {r["step_name"]: r["holders"] for r in rows}


async def task_states(backend: PostgresBackend, execution_id: str) -> list[str]:
    return [t.state for t in await backend.list_tasks_for_execution(execution_id)]


async def execution_state(backend: PostgresBackend, execution_id: str) -> str:
    ex = await backend.get_execution(execution_id)
    assert ex is not None
    return ex.state


_queues = itertools.count()


async def family(
    b: PostgresBackend, n: int, *, capped: bool = False, deadline: datetime | None = None,
) -> tuple[TaskRecord, list[TaskRecord]]:
    """A running root task with ``n`` children born running under its worker's lease
    (capped ones hold a max_concurrent slot each). Its own queue keeps claims apart."""
    new = new_execution(queue=f"q{next(_queues)}", deadline=deadline)
    await b.create_execution(new, T0)
    (root,) = await b.claim("w", claim_filter(queues=[new.queue]), 1, at(0), at(600))
    children = []
    for seq in range(n):
        step = new_task(parent_id=root.id, seq=seq, queue=new.queue,
                        name=CAPPED if capped else "app:work",
                        max_concurrent=100 if capped else None)
        child, _ = await b.create_step(root.id, root.fence, step, at(0), Lease("w", at(600)))
        children.append(child)
    return root, children


# -- settling ---------------------------------------------------------------------------------------
def _stop(w: PostgresBackend, c: TaskRecord, how: int) -> Awaitable[Any]:
    """One of the seven ways a worker's call takes its task out of 'running'."""
    match how % 7:
        case 0:
            return w.complete_task(c.id, c.fence, b"late", at(2))
        case 1:
            return w.fail_task(c.id, c.fence, b"e", at(2), "exhausted")
        case 2:
            return w.cancel_task(c.id, c.fence, at(2))
        case 3:
            return w.retry_task(c.id, c.fence, b"e", at(3), at(2))
        case 4:
            return w.release_task(c.id, c.fence, at(2))
        case 5:
            return w.suspend_task(c.id, c.fence, [], at(2))
        case _:
            return w.renew_leases("w", [(c.id, c.fence)], at(700))


async def test_siblings_stopping_at_once_always_settle_a_cancelling_execution(
    backend: PostgresBackend, workers: list[PostgresBackend]
) -> None:
    # Each sibling's transaction checks "no task of it runs" after it stopped its own task:
    # without the lock on the execution row (and a check in a later statement), two of them
    # finishing at once each see the other still running, and it stays 'cancelling'.
    for round_ in range(30):
        root, children = await family(backend, 7, capped=round_ % 2 == 0)
        assert await backend.cancel_execution(root.execution_id, ERROR, at(1)) == "cancelling"
        results = await asyncio.gather(
            workers[0].cancel_task(root.id, root.fence, at(2)),
            *(_stop(workers[1 + i % 7], c, i + round_) for i, c in enumerate(children)))
        # Each call still held its task: done (or, for a heartbeat, the task reported lost).
        assert all(r is True or (isinstance(r, set) and len(r) == 1) for r in results)
        assert await execution_state(backend, root.execution_id) == "cancelled", round_
        states = await task_states(backend, root.execution_id)
        assert "running" not in states and "pending" not in states and "waiting" not in states
        await assert_counters_exact(backend)


async def _cancel_amid_work(
    backend: PostgresBackend, workers: list[PostgresBackend], round_: int, rng: random.Random
) -> None:
    root, children = await family(backend, 6, capped=round_ % 3 == 0)
    lease = Lease("w", at(600))

    async def step_insert(w: PostgresBackend, seq: int, leased: bool) -> Any:
        try:
            return await w.create_step(root.id, root.fence, new_task(parent_id=root.id, seq=seq),
                                       at(1), lease if leased else None)
        except LeaseLostError:
            return "lost"

    work: list[Callable[[PostgresBackend], Awaitable[Any]]] = [
        lambda w: w.complete_task(children[0].id, children[0].fence, b"1", at(1)),
        lambda w: w.retry_task(children[1].id, children[1].fence, b"e", at(1), at(1)),
        lambda w: w.release_task(children[2].id, children[2].fence, at(1)),
        lambda w: w.renew_leases("w", [(c.id, c.fence) for c in children[3:]], at(700)),
        lambda w: w.suspend_task(root.id, root.fence, [c.id for c in children], at(1)),
        lambda w: step_insert(w, 10 + round_, True),
        lambda w: step_insert(w, 20 + round_, False),
    ]
    rng.shuffle(work)
    cancel = workers[0].cancel_execution(root.execution_id, ERROR, at(1))
    results = await asyncio.gather(cancel, *(job(workers[1 + i]) for i, job in enumerate(work)))
    assert results[0] in ("cancelling", "cancelled")
    # The workers learn of it by their heartbeats.
    for t in await backend.list_tasks_for_execution(root.execution_id):
        if t.state == "running":
            assert t.worker_id is not None
            assert await backend.renew_leases(t.worker_id, [(t.id, t.fence)], at(700)) == {t.id}
    states = await task_states(backend, root.execution_id)
    assert not {"pending", "waiting", "running"} & set(states), (round_, states)
    assert await execution_state(backend, root.execution_id) == "cancelled"
    await assert_counters_exact(backend)


async def test_a_cancellation_racing_the_work_of_its_tasks_leaves_nothing_behind(
    backend: PostgresBackend, workers: list[PostgresBackend]
) -> None:
    # While cancel_execution runs, the workers go on: children finish, retry, are released,
    # the root suspends on them, new steps are inserted (born running or pending), leases
    # are renewed. Whatever the interleaving, once the workers have heard of it (a heartbeat
    # of what they still hold), nothing is pending, waiting or running, and it is cancelled.
    rng = random.Random(7)
    for round_ in range(25):
        await _cancel_amid_work(backend, workers, round_, rng)


async def test_no_claim_takes_a_task_of_an_execution_after_its_cancellation_returned(
    backend: PostgresBackend, workers: list[PostgresBackend]
) -> None:
    # Pending roots, and running ones whose worker died (their lease expired at 60 s: the
    # claims below, at 61 s, would recover them). Claimers and a canceller race; a logical
    # clock orders the calls as the event loop sees them.
    news = [new_execution(queue="race", name=CAPPED if i % 4 == 0 else "app:work",
                          max_concurrent=50 if i % 4 == 0 else None) for i in range(120)]
    await asyncio.gather(*(backend.create_execution(n, T0) for n in news))
    orphaned = await backend.claim("dead", EVERYTHING, 40, at(0), at(60))
    assert len(orphaned) == 40
    tick = itertools.count()
    cancelled_at: dict[str, int] = {}
    claimed: list[tuple[int, TaskRecord]] = []

    async def canceller(w: PostgresBackend) -> None:
        order = [n.id for n in news]
        random.Random(3).shuffle(order)
        for execution_id in order:
            await w.cancel_execution(execution_id, ERROR, at(61))
            cancelled_at[execution_id] = next(tick)

    async def claimer(i: int, w: PostgresBackend) -> None:
        while len(cancelled_at) < len(news):
            started = next(tick)
            for t in await w.claim(f"w{i}", EVERYTHING, 2, at(61), at(600)):
                claimed.append((started, t))
            await asyncio.sleep(0)

    await asyncio.gather(canceller(workers[0]),
                         *(claimer(i, w) for i, w in enumerate(workers[1:])))
    late = [t.id for started, t in claimed if cancelled_at.get(t.execution_id, 1 << 60) < started]
    assert late == []
    # Every execution settles once the tasks still running are heard from.
    for n in news:
        for t in await backend.list_tasks_for_execution(n.id):
            if t.state == "running" and t.worker_id != "dead":
                assert t.worker_id is not None
                await backend.renew_leases(t.worker_id, [(t.id, t.fence)], at(62))
    # The dead worker's tasks are never heard from: the expiry sweep cancels them.
    assert await backend.expire_executions(TIMEOUT, at(700)) == []
    assert {await execution_state(backend, n.id) for n in news} == {"cancelled"}
    assert await backend.count_tasks(state="running") == 0
    assert await backend.count_tasks(state="pending") == 0
    assert await assert_counters_exact(backend) == {CAPPED: 0}


# -- deadlines --------------------------------------------------------------------------------------
async def test_deadlines_racing_completions_and_each_other(
    backend: PostgresBackend, workers: list[PostgresBackend]
) -> None:
    families = [await family(backend, 3, capped=i % 2 == 0, deadline=at(30))
                for i in range(16)]
    finishing = [
        w.complete_task(root.id, root.fence, b"done", at(31))
        for w, (root, _) in zip(itertools.cycle(workers[2:]), families[::2], strict=False)
    ] + [
        w.complete_task(c.id, c.fence, b"1", at(31))
        for w, (_, children) in zip(itertools.cycle(workers[2:]), families[1::2],
                                    strict=False)
        for c in children
    ]
    sweeps = [asyncio.ensure_future(w.expire_executions(TIMEOUT, at(31))) for w in workers[:2]]
    await asyncio.gather(*sweeps, *finishing)
    expired = [execution_id for sweep in sweeps for execution_id in sweep.result()]
    assert len(expired) == len(set(expired)), "an execution timed out twice"
    for root, _ in families:
        state = await execution_state(backend, root.execution_id)
        if root.execution_id in expired:
            assert state == "timed_out"
            tasks = await backend.list_tasks_for_execution(root.execution_id)
            assert {t.state for t in tasks} <= {"cancelled", "completed"}
            assert tasks[0].state == "cancelled"
        else:
            assert state == "completed"
    assert {f[0].execution_id for f in families[1::2]} <= set(expired)
    assert await backend.expire_executions(TIMEOUT, at(40)) == []
    # What the roots that completed left running is theirs to finish; nothing is capped
    # beyond what still runs.
    await assert_counters_exact(backend)


# -- max_concurrent ---------------------------------------------------------------------------------
async def test_every_way_of_cancelling_a_slot_holder_gives_its_slot_back(
    backend: PostgresBackend,
) -> None:
    root, c = await family(backend, 6, capped=True)
    assert await assert_counters_exact(backend) == {CAPPED: 6}
    assert await backend.cancel_execution(root.execution_id, ERROR, at(1)) == "cancelling"
    assert await assert_counters_exact(backend) == {CAPPED: 6}  # running ones keep theirs
    assert await backend.cancel_task(c[0].id, c[0].fence, at(2))
    assert await backend.retry_task(c[1].id, c[1].fence, b"e", at(3), at(2))
    assert await backend.release_task(c[2].id, c[2].fence, at(2))
    assert await backend.suspend_task(c[3].id, c[3].fence, [], at(2))
    assert await backend.renew_leases("w", [(c[4].id, c[4].fence)], at(90)) == {c[4].id}
    assert await assert_counters_exact(backend) == {CAPPED: 1}
    # The last one's worker dies. A claim of another capped execution's task takes back the
    # slot of that lapsed holder (it no longer counts), but never the task itself ...
    live = new_execution(name=CAPPED, max_concurrent=100, queue="live")
    await backend.create_execution(live, T0)
    (got,) = await backend.claim("w2", EVERYTHING, 5, at(601), at(700))
    assert got.id == live.root.id
    assert await assert_counters_exact(backend) == {CAPPED: 1}
    # ... and the sweep cancels it without giving the slot back twice.
    assert await backend.expire_executions(TIMEOUT, at(601)) == []
    assert await assert_counters_exact(backend) == {CAPPED: 1}
    assert set(await task_states(backend, root.execution_id)) == {"cancelled"}
    assert await execution_state(backend, root.execution_id) == "cancelled"
    assert await backend.complete_task(got.id, got.fence, b"1", at(602))
    assert await assert_counters_exact(backend) == {CAPPED: 0}
    # A time-out cancels running slot holders too.
    root, _ = await family(backend, 4, capped=True, deadline=at(30))
    assert await assert_counters_exact(backend) == {CAPPED: 4}
    assert await backend.expire_executions(TIMEOUT, at(31)) == [root.execution_id]
    assert await assert_counters_exact(backend) == {CAPPED: 0}
    # And a root that completes with a slot holder still running cancels it, giving its slot
    # back at once (the sweep has nothing left to give back).
    root, (child,) = await family(backend, 1, capped=True)
    assert child.state == "running"
    assert await assert_counters_exact(backend) == {CAPPED: 1}
    assert await backend.complete_task(root.id, root.fence, b"1", at(1))
    assert await task_states(backend, root.execution_id) == ["completed", "cancelled"]
    assert await assert_counters_exact(backend) == {CAPPED: 0}
    assert await backend.expire_executions(TIMEOUT, at(601)) == []
    assert await assert_counters_exact(backend) == {CAPPED: 0}


# -- cost -------------------------------------------------------------------------------------------
async def test_each_cancellation_call_is_one_statement(backend: PostgresBackend) -> None:
    root, children = await family(backend, 4, deadline=at(30))
    other, _ = await family(backend, 0, deadline=at(30))

    async def statements(call: Awaitable[Any]) -> int:
        before = backend.stats["statements"]
        await call
        return backend.stats["statements"] - before

    assert await statements(backend.cancel_execution(root.execution_id, ERROR, at(1))) == 1
    assert await statements(backend.cancel_task(children[0].id, children[0].fence, at(2))) == 1
    assert await statements(backend.retry_task(children[1].id, children[1].fence, b"e",
                                               at(3), at(2))) == 1
    assert await statements(backend.release_task(children[2].id, children[2].fence,
                                                 at(2))) == 1
    assert await statements(backend.renew_leases("w", [(children[3].id, children[3].fence)],
                                                 at(90))) == 1
    assert await statements(backend.suspend_task(root.id, root.fence, [], at(2))) == 1
    assert await execution_state(backend, root.execution_id) == "cancelled"
    assert await statements(backend.expire_executions(TIMEOUT, at(31))) == 1
    assert await execution_state(backend, other.execution_id) == "timed_out"


# -- upgrade ------------------------------------------------------------------------------------------
async def test_a_version_1_schema_in_use_is_migrated_and_its_executions_can_be_cancelled() -> None:
    dsn = postgres_test_dsn()
    async with temporary_schema(dsn) as schema:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
        try:
            await conn.execute(MIGRATIONS[0].sql)
            await conn.execute("CREATE TABLE stent_schema_version (version integer PRIMARY KEY,"
                               " applied_at timestamptz NOT NULL DEFAULT now())")
            await conn.execute("INSERT INTO stent_schema_version (version) VALUES (1)")
            # Rows written by version 1, with its columns.
            new = new_execution()
            first = new.root
            await conn.execute(
                "INSERT INTO stent_executions (id, function, state, root_task_id, args, "
                "created_at, progress) VALUES ($1, $2, 'pending', $3, $4, $5, "
                "'[{\"event\": \"dispatched\"}]')", new.id, new.function, first.id, new.args, T0)
            await conn.execute(
                "INSERT INTO stent_tasks (id, execution_id, parent_attempt, seq, step_name, "
                "kind, state, args, arg_digest, due_at, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10)",
                first.id, new.id, first.parent_attempt, first.seq, first.step_name, first.kind,
                first.args, first.arg_digest, first.due_at, T0)
        finally:
            await conn.close()
        b = PostgresBackend(dsn, schema=schema, min_pool_size=1)
        try:
            await b.init_db()
            (root,) = await b.claim("w", claim_filter(), 1, at(0), at(60))
            assert await b.cancel_execution(new.id, ERROR, at(1)) == "cancelling"
            assert await b.complete_task(root.id, root.fence, b"late", at(2))
            assert await execution_state(b, new.id) == "cancelled"
        finally:
            await b.close()


# -- against the reference backend ----------------------------------------------------------------
def _cancellation_operation(
    rng: random.Random, now: datetime, executions: list[str], tasks: list[TaskRecord],
) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    running = [t for t in tasks if t.state == "running"]
    op = rng.choice(["deadline", "cancel", "cancel", "cancel_task", "cancel_task", "expire"])
    if op == "deadline" or (op == "cancel" and not executions):
        name = rng.choice(sorted(CAPS))
        new = new_execution(name=name, max_concurrent=CAPS[name], due_at=now,
                            deadline=now + timedelta(seconds=rng.randint(0, 12)))
        return "create_execution", (new, now), {}
    if op == "cancel":
        pick = rng.choice(executions) if rng.random() < 0.9 else "no-such-execution"
        return "cancel_execution", (pick, ERROR, now), {}
    if op == "cancel_task" and running:
        t = rng.choice(running)
        return "cancel_task", (t.id, t.fence if rng.random() < 0.85 else t.fence + 1, now), {}
    return "expire_executions", (TIMEOUT, now), {"limit": 100}


@pytest.mark.parametrize("seed", range(8))
async def test_random_operations_with_cancellations_match_the_reference_backend(
    seed: int, backend: PostgresBackend
) -> None:
    rng = random.Random(1000 + seed)
    mem = InMemoryBackend()
    now = T0
    for step in range(250):
        executions = await mem.list_executions(limit=10_000)
        tasks = [t for ex in executions for t in await mem.list_tasks_for_execution(ex.id)]
        dead = [d.task_id for d in await mem.list_dead_letters(10_000)]
        if rng.random() < 0.3:
            name, args, kwargs = _cancellation_operation(
                rng, now, [ex.id for ex in executions], tasks)
        else:
            name, args, kwargs = _random_operation(rng, now, tasks, dead)
        expected = await _call(mem, name, args, kwargs)
        got = await _call(backend, name, args, kwargs)
        if name == "expire_executions":  # the same ones (limit is never reached here)
            expected, got = (expected[0], sorted(expected[1])), (got[0], sorted(got[1]))
        assert got == expected, f"seed {seed}, step {step}: {name}{args}"
        if step % 10 == 0:
            await _compare_state(mem, backend)
            for state in ("cancelling", "cancelled", "timed_out"):
                assert await backend.count_executions(state) == \
                    await mem.count_executions(state)
        now += timedelta(seconds=rng.choice([0, 0, 1, 2, 5]))
    await _compare_state(mem, backend)
    await _check_counters(backend)

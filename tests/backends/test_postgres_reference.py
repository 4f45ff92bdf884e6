"""PostgresBackend against the reference backend: random sequences of operations (valid and
invalid, fenced and stale) must give the same answers and leave the same state, and the
max_concurrent counters must stay exact throughout."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from stent.errors import BackendError, LeaseLostError
from stent.records import Lease, TaskRecord
from stent_postgres import PostgresBackend
from stent_testing.conformance.builders import T0, claim_filter, new_execution, new_task
from stent_testing.memory import InMemoryBackend
from stent_testing.pg import create_test_backend, dispose_test_backend, postgres_test_dsn

#: Capped functions keep one cap each (the engine stores a function's cap on all its tasks).
#: An uncapped task that shares its name with a capped one holds no slot here, where the
#: reference backend counts every running instance of the name: see PostgresBackend.claim.
CAPS = {"app:work": None, "app:one": 1, "app:two": 2}
NAMES = set(CAPS)


@pytest.fixture
async def pg() -> AsyncIterator[PostgresBackend]:
    b = await create_test_backend(min_pool_size=1, max_pool_size=2)
    yield b
    await dispose_test_backend(b)


async def _check_counters(backend: PostgresBackend) -> None:
    conn = await asyncpg.connect(postgres_test_dsn(),
                                 server_settings={"search_path": f'"{backend.schema}"'})
    try:
        drift = await conn.fetch("""
            SELECT c.step_name, c.holders, count(t.id) AS actual
            FROM stent_concurrency AS c
            LEFT JOIN stent_tasks AS t
                ON t.step_name = c.step_name AND t.slot AND t.state = 'running'
            GROUP BY c.step_name, c.holders
            HAVING c.holders <> count(t.id)""")
    finally:
        await conn.close()
    assert [dict(r) for r in drift] == []


async def _compare_state(mem: InMemoryBackend, pg: PostgresBackend) -> None:
    executions = await mem.list_executions(limit=10_000)
    assert await pg.list_executions(limit=10_000) == executions
    for ex in executions:
        assert await pg.list_tasks_for_execution(ex.id) == \
            await mem.list_tasks_for_execution(ex.id)
    assert await pg.list_dead_letters(10_000) == await mem.list_dead_letters(10_000)
    for queue in (None, "q1"):
        assert await pg.queue_depth(queue) == await mem.queue_depth(queue)
    for state in (None, "pending", "running", "waiting", "completed", "failed"):
        assert await pg.count_tasks(state=state) == await mem.count_tasks(state=state)
        assert await pg.count_executions(state) == await mem.count_executions(state)
    await _check_counters(pg)


def _random_operation(
    rng: random.Random, now: datetime, tasks: list[TaskRecord], dead: list[str]
) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """One random backend call as (method name, args, kwargs), biased towards calls that
    succeed: mostly on running tasks with their current fence, and on dead letters."""
    task_ids = [t.id for t in tasks]
    running = [t for t in tasks if t.state == "running"]
    held = rng.choice(running) if running and rng.random() < 0.8 else (
        rng.choice(tasks) if tasks else None)
    pick = held.id if held is not None else "none"
    fence = held.fence if held is not None and rng.random() < 0.85 else rng.randint(0, 3)
    queue = rng.choice([None, "q1"])
    tags = rng.choice([(), ("a",), ("b",), ("a", "b")])
    name = rng.choice(sorted(NAMES))
    op = rng.choice(["dispatch", "dispatch", "claim", "claim", "claim", "step", "step", "step",
                     "complete", "complete", "fail", "retry", "release", "suspend", "renew",
                     "update", "replay", "replay", "discard", "cleanup", "cleanup_dl",
                     "outcomes", "load"])
    if op == "dispatch":
        key = rng.choice([None, None, "k1", "k2"])
        new = new_execution(name=name, max_concurrent=CAPS[name], queue=queue, tags=tags,
                            priority=rng.randint(0, 2), idempotency_key=key,
                            due_at=now + timedelta(seconds=rng.randint(-2, 3)))
        return "create_execution", (new, now), {}
    if op == "claim":
        flt = claim_filter(NAMES, queues=rng.choice([None, [None], ["q1"], [None, "q1"]]),
                           tags=rng.choice([None, ["a"], ["b"]]))
        return "claim", (rng.choice(["w1", "w2"]), flt, rng.randint(1, 3), now,
                         now + timedelta(seconds=rng.randint(1, 8))), {}
    if op == "step":
        kind = rng.choice(["function", "function", "sleep", "value"])
        attempt = held.attempt if held is not None else 1
        born = rng.choice(["pending", "pending", "failed", "retrying"]) if kind == "function" \
            else ("completed" if kind == "value" else "pending")
        extra: dict[str, Any] = {}
        if born == "failed":
            extra = {"state": "failed", "error": b"e", "retries": 2, "attempt": 3,
                     "dead_letter_reason": rng.choice([None, "exhausted"])}
        elif born == "retrying":
            extra = {"error": b"flaky", "retries": 1, "attempt": 2}
        step = new_task(parent_id=pick, parent_attempt=rng.choice([attempt, attempt, 2]),
                        seq=rng.randint(0, 3), kind=kind,
                        name=name if kind == "function" else f"stent.{kind}",
                        max_concurrent=CAPS[name] if kind == "function" else None,
                        queue=queue, tags=tags, due_at=now,
                        state="completed" if kind == "value" else "pending",
                        result=b"v" if kind == "value" else None)
        if extra:
            import dataclasses

            step = dataclasses.replace(step, **extra)
        lease = rng.choice([None, Lease("w1", now + timedelta(seconds=5))])
        return "create_step", (pick, fence, step, now, lease), {}
    if op in ("replay", "discard") and dead and rng.random() < 0.8:
        pick = rng.choice(dead)
    if op == "replay":
        return "replay_dead_letter", (pick,), {
            "queue": queue, "reset_retries": rng.random() < 0.5, "now": now,
            "set_queue": rng.random() < 0.5}
    if op == "update":
        return "update", (pick, rng.choice(["pending", "running", "completed"]),
                          rng.choice([None, now + timedelta(seconds=3)])), {}
    table: dict[str, tuple[str, tuple[Any, ...]]] = {
        "complete": ("complete_task", (pick, fence, b"r", now)),
        "fail": ("fail_task", (pick, fence, b"e", now, rng.choice([None, "exhausted"]))),
        "retry": ("retry_task", (pick, fence, b"e", now + timedelta(seconds=1), now)),
        "release": ("release_task", (pick, fence, now)),
        "suspend": ("suspend_task", (pick, fence, rng.sample(task_ids, min(2, len(task_ids))),
                                     now)),
        "renew": ("renew_leases", (rng.choice(["w1", "w2"]), [(pick, fence)],
                                   now + timedelta(seconds=5))),
        "discard": ("discard_dead_letter", (pick,)),
        "cleanup": ("cleanup_executions", (now - timedelta(seconds=rng.randint(0, 20)),)),
        "cleanup_dl": ("cleanup_dead_letters", (now - timedelta(seconds=rng.randint(0, 20)),)),
        "outcomes": ("get_outcomes", (rng.sample(task_ids, min(3, len(task_ids))),)),
        "load": ("load_steps", (pick, rng.randint(1, 2))),
    }
    method, args = table[op]
    return method, args, {}


async def _call(backend: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        if name == "update":
            task = await backend.get_task(args[0])
            if task is None:
                return None
            task.state = args[1]
            task.worker_id = None if args[1] != "running" else "ops"
            task.lease_expires_at = args[2]
            await backend.update_task(task)
            return task
        return ("ok", await getattr(backend, name)(*args, **kwargs))
    except (LeaseLostError, BackendError) as exc:
        return ("raised", type(exc))


@pytest.mark.parametrize("seed", range(10))
async def test_random_operations_match_the_reference_backend(
    seed: int, pg: PostgresBackend
) -> None:
    rng = random.Random(seed)
    mem = InMemoryBackend()
    now = T0
    for step in range(250):
        tasks = [t for ex in await mem.list_executions(limit=10_000)
                 for t in await mem.list_tasks_for_execution(ex.id)]
        dead = [d.task_id for d in await mem.list_dead_letters(10_000)]
        name, args, kwargs = _random_operation(rng, now, tasks, dead)
        expected = await _call(mem, name, args, kwargs)
        got = await _call(pg, name, args, kwargs)
        assert got == expected, f"seed {seed}, step {step}: {name}{args}"
        if step % 10 == 0:
            await _compare_state(mem, pg)
        now += timedelta(seconds=rng.choice([0, 0, 1, 2, 5]))
    await _compare_state(mem, pg)

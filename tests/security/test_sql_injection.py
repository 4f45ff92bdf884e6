"""SQL injection: a corpus of a few hundred hostile strings goes through every public filter
and name on both SQL backends (SQLite, PostgreSQL).

* Lookups by hostile ids (executions, tasks, dead letters, signals) and hostile filters
  (states, queues) find nothing, change nothing and raise only the documented errors.
* Hostile strings that are legal values (execution ids, idempotency keys, cache keys, names
  within ``[A-Za-z0-9_.:-]``) are stored and found again exactly: a ``%`` or ``_`` never
  matches another row, case and Unicode normalization are kept.
* Hostile names outside the name pattern are refused with ``ValueError`` and nothing is
  written.
* Afterwards the schema (tables and columns) is unchanged and every table holds exactly the
  rows the legitimate calls wrote.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from stent import ExecutionNotFound, Stent
from stent.backend import Backend
from stent.caching import cache_key

from .corpus import CORPUS, LEGIT_ID, NUL_CORPUS, SURROGATE_CORPUS, valid_name
from .rawdb import RawDB, diff_counts
from .workflows import echo, fails, healthy, keyed_echo

STATES = {"pending", "running", "completed", "failed", "timed_out", "cancelling", "cancelled"}


def corpus_for(kind: str) -> list[str]:
    """Hostile strings for lookups and filters: with NUL only where the driver binds it
    (SQLite; PostgreSQL text cannot hold NUL: see test_ids_no_database_can_hold_are_not_found).
    Values to be stored (ids, keys) come from ``CORPUS`` alone: an id with a NUL is refused
    on every backend."""
    return CORPUS + (NUL_CORPUS if kind == "sqlite" else [])


async def seed(ex: Stent, start: Any) -> dict[str, str]:
    """Legitimate rows: a completed execution (with an idempotency key and a cache entry), a
    dead-lettered one, and a pending one on a queue nobody serves (the worker started here
    serves the default queue only)."""
    await start(ex, queues=[None])
    ids = {
        "done": await ex.dispatch(healthy, 1, execution_id=LEGIT_ID, idempotency_key="key-1"),
        "failed": await ex.dispatch(fails, execution_id="failing-1"),
        "keyed": await ex.dispatch(keyed_echo, "k-1", "legit", execution_id="keyed-1"),
    }
    for eid in ids.values():
        await asyncio.wait_for(ex.wait_for(eid), 60)
    ids["parked"] = await ex.dispatch(echo, 1, execution_id="parked-1", queue="parked")
    return ids


async def legit_rows_intact(ex: Stent, backend: Backend, parked: int = 1) -> None:
    assert (await ex.result_of(LEGIT_ID)).unwrap() == 2
    assert (await ex.result_of("keyed-1")).unwrap() == "legit"
    assert (await ex.state_of("failing-1")).state == "failed"
    assert [d.execution_id for d in await ex.list_dead_letters(1000)] == ["failing-1"]
    assert (await ex.state_of("parked-1")).state == "pending"
    assert await backend.queue_depth("parked") == parked


async def test_hostile_lookups_and_filters_match_nothing(
    stent_executor: Stent, stent_backend: Backend, raw: RawDB, worker_of: Any,
    stent_backend_kind: str,
) -> None:
    ex, backend = stent_executor, stent_backend
    await seed(ex, worker_of)
    schema, counts = await raw.schema(), await raw.counts()
    dead_task = (await ex.list_dead_letters())[0].task_id
    corpus = corpus_for(stent_backend_kind)
    assert len(corpus) >= 300
    for s in corpus:
        # by id: nothing found, nothing changed
        assert await backend.get_execution(s) is None, s
        assert await backend.get_task(s) is None, s
        assert await backend.list_tasks_for_execution(s) == [], s
        for call in (ex.state_of, ex.result_of, ex.history, ex.cancel, ex.wait_for):
            with pytest.raises(ExecutionNotFound):
                await call(s)
        with pytest.raises(ExecutionNotFound):
            await ex.send_signal(s, "go", 1)
        # (ids longer than any stored id are not found either, without a query)
        assert await ex.get_dead_letter(s) is None, s
        assert await ex.discard_dead_letter(s) is False, s
        assert await ex.replay_dead_letter(s) is False, s
        # as a filter: exact matches only
        assert await backend.count_tasks(queue=s) == 0, s
        assert await backend.count_tasks(state=s) == 0, s
        assert await backend.count_tasks(queue=s, state=s) == 0, s
        assert await backend.count_tasks(queue="parked", state=s) == 0, s
        assert await backend.count_executions(state=s) == 0, s
        assert await backend.queue_depth(s) == 0, s
        assert await backend.list_executions(limit=100, offset=0, state=s) == [], s
        with pytest.raises(ValueError, match="state"):
            await ex.list_executions(state=s)
        if valid_name(s):
            assert await ex.queue_depth(s) == 0, s
        else:
            with pytest.raises(ValueError, match="queue"):
                await ex.queue_depth(s)
    # the real rows are still found exactly
    assert await backend.count_tasks(queue="parked") == 1
    assert await backend.count_tasks(queue="parked", state="pending") == 1
    assert await ex.get_dead_letter(dead_task) is not None
    assert await raw.schema() == schema
    assert diff_counts(counts, await raw.counts()) == {}
    await legit_rows_intact(ex, backend)


async def test_hostile_execution_ids_and_idempotency_keys_are_stored_exactly(
    stent_executor: Stent, stent_backend: Backend, raw: RawDB, worker_of: Any,
    stent_backend_kind: str,
) -> None:
    ex, backend = stent_executor, stent_backend
    await seed(ex, worker_of)
    schema, counts = await raw.schema(), await raw.counts()
    accepted: dict[str, int] = {}
    for i, s in enumerate(CORPUS):
        if len(s) > 200:
            with pytest.raises(ValueError, match="execution_id"):
                await ex.dispatch(echo, i, execution_id=s, queue="parked")
            continue
        assert await ex.dispatch(echo, i, execution_id=s, queue="parked") == s
        accepted[s] = i
    keyed: dict[str, str] = {}
    for i, s in enumerate(CORPUS):
        key = s
        if len(key) > 1000:
            with pytest.raises(ValueError, match="idempotency_key"):
                await ex.dispatch(echo, -i, idempotency_key=key, queue="parked")
            continue
        eid = await ex.dispatch(echo, -i, idempotency_key=key, queue="parked")
        assert eid not in (LEGIT_ID, *accepted), f"key {key!r} matched another execution"
        assert await ex.dispatch(echo, -i, idempotency_key=key, queue="parked") == eid
        keyed[key] = eid
    assert len(set(keyed.values())) == len(keyed), "two keys gave the same execution"
    # found again exactly, and nothing else
    for s in accepted:
        state = await ex.state_of(s)
        assert state.id == s
        task = await backend.get_task(s)
        assert task is not None and task.id == s and task.execution_id == s
        assert [t.id for t in await backend.list_tasks_for_execution(s)] == [s]
    assert await backend.queue_depth("parked") == 1 + len(accepted) + len(keyed)
    assert await raw.schema() == schema
    new = len(accepted) + len(keyed)
    expected = {"stent_executions": (counts["stent_executions"], counts["stent_executions"] + new),
                "stent_tasks": (counts["stent_tasks"], counts["stent_tasks"] + new)}
    assert diff_counts(counts, await raw.counts()) == expected
    await legit_rows_intact(ex, backend, parked=1 + new)
    # cancel one with a wildcard id: only that one is cancelled
    assert await ex.cancel("%") == "cancelled"
    assert await backend.count_executions(state="cancelled") == 1
    assert (await ex.state_of("parked-1")).state == "pending"


async def test_hostile_ids_run_to_completion(
    stent_executor: Stent, stent_backend: Backend, raw: RawDB, worker_of: Any,
    stent_backend_kind: str,
) -> None:
    """Executions whose ids are hostile strings run, notify (PostgreSQL: LISTEN/NOTIFY
    payloads of comma-joined ids) and return their own result."""
    ex = stent_executor
    await worker_of(ex, max_concurrency=16)
    ids = [s for s in CORPUS if len(s) <= 200]
    for i, s in enumerate(ids):
        assert await ex.dispatch(echo, i, s, execution_id=s) == s
    for i, s in enumerate(ids):
        result = await asyncio.wait_for(ex.wait_for(s), 60)
        assert result.unwrap() == [[i, s], {}], s
    assert await stent_backend.count_executions(state="completed") == len(ids)


async def test_hostile_names_are_refused_or_matched_exactly(
    stent_executor: Stent, stent_backend: Backend, raw: RawDB, worker_of: Any,
    stent_backend_kind: str,
) -> None:
    ex, backend = stent_executor, stent_backend
    await seed(ex, worker_of)
    schema, counts = await raw.schema(), await raw.counts()
    queues: set[str] = set()
    tagged = signals = 0
    for s in corpus_for(stent_backend_kind) + SURROGATE_CORPUS:
        if not valid_name(s):
            with pytest.raises(ValueError, match="queue") as info:
                await ex.dispatch(echo, 1, queue=s)
            assert repr(s) in str(info.value)
            with pytest.raises(ValueError, match="tag"):
                await ex.dispatch(echo, 1, tags=["ok", s])
            with pytest.raises(ValueError, match="signal"):
                await ex.send_signal("parked-1", s, 1)
            with pytest.raises(ValueError, match="queue"):
                await ex.replay_dead_letter("x", queue=s)
            continue
        await ex.dispatch(echo, 1, queue=s)
        queues.add(s)
        await ex.dispatch(echo, 1, queue="parked", tags=[s])
        tagged += 1
        await ex.send_signal("parked-1", s, s)
        signals += 1
    assert not diff_counts(counts, await raw.counts()).keys() - {
        "stent_executions", "stent_tasks", "stent_signals"}
    for q in queues:  # a "_" queue counts its own tasks only, not every one-letter queue
        assert await ex.queue_depth(q) == 1, q
        assert await backend.count_tasks(queue=q) == 1, q
    assert await ex.queue_depth("parked") == 1 + tagged
    assert await raw.schema() == schema
    delta = diff_counts(counts, await raw.counts())
    new = len(queues) + tagged
    assert delta["stent_executions"][1] - delta["stent_executions"][0] == new
    assert delta["stent_tasks"][1] - delta["stent_tasks"][0] == new
    assert delta["stent_signals"][1] - delta["stent_signals"][0] == signals
    # the signals went to parked-1 under their exact names
    stored = await raw.fetch("SELECT name FROM stent_signals WHERE execution_id = ?", "parked-1")
    assert sorted(r[0] for r in stored) == sorted(s for s in corpus_for(stent_backend_kind)
                                                  if valid_name(s))
    await legit_rows_intact(ex, backend, parked=1 + tagged)


async def test_cache_keys_from_idempotency_key_func_are_exact(
    stent_executor: Stent, stent_backend: Backend, raw: RawDB, worker_of: Any,
    stent_backend_kind: str,
) -> None:
    ex = stent_executor
    await seed(ex, worker_of)
    schema = await raw.schema()
    keys = [s for s in CORPUS if len(s) <= 1000]
    eids = [await ex.dispatch(keyed_echo, key, i) for i, key in enumerate(keys)]
    for i, eid in enumerate(eids):
        result = await asyncio.wait_for(ex.wait_for(eid), 60)
        assert result.unwrap() == i, f"key {keys[i]!r} returned another call's result"
    stored = {r[0] for r in await raw.fetch("SELECT key FROM stent_cache")}
    assert stored == {cache_key(keyed_echo, ex.serializer, (k, 0), {}) for k in [*keys, "k-1"]}
    assert len(stored) == len(keys) + 1  # one entry per distinct key, none merged
    # a second call with the same key is a hit: its body does not run, the first result returns
    again = await ex.dispatch(keyed_echo, keys[0], 0)
    assert (await asyncio.wait_for(ex.wait_for(again), 60)).unwrap() == 0
    assert await raw.schema() == schema
    await legit_rows_intact(ex, stent_backend)


@pytest.mark.parametrize("s", ["a\x00b", LEGIT_ID + "\x00", "a\udc80b", "\udcff%"], ids=ascii)
async def test_ids_no_database_can_hold_are_not_found(
    stent_executor: Stent, stent_backend: Backend, raw: RawDB, s: str,
) -> None:
    """An id with a NUL (PostgreSQL text cannot hold it) or a lone surrogate (not UTF-8)
    names no execution: lookups say ``ExecutionNotFound`` on every backend, never a
    ``BackendError`` or a ``UnicodeEncodeError``, and dispatch refuses it as an id."""
    ex = stent_executor
    counts = await raw.counts()
    for call in (ex.state_of, ex.result_of, ex.history, ex.cancel, ex.wait_for):
        with pytest.raises(ExecutionNotFound):
            await call(s)
    with pytest.raises(ExecutionNotFound):
        await ex.send_signal(s, "go", 1)
    assert await ex.get_dead_letter(s) is None
    assert await ex.discard_dead_letter(s) is False
    with pytest.raises(ValueError, match="execution_id"):
        await ex.dispatch(echo, 1, execution_id=s)
    with pytest.raises(ValueError, match="idempotency_key"):
        await ex.dispatch(echo, 1, idempotency_key=s)
    assert diff_counts(counts, await raw.counts()) == {}

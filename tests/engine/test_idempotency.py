"""Idempotent and cached functions, and idempotent dispatch (SPEC §2, §3), on every backend."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from stent import IdempotencyConflictError, Result, Stent
from stent.backend import Backend
from stent_testing import FakeClock

from .helpers import start_worker, stop_worker

runs: Counter[str] = Counter()
gates: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()
    gates["slow"] = asyncio.Event()  # one per test: an Event binds to its first loop


@Stent.durable(idempotent=True)
async def charge(order: str, cents: int) -> str:
    runs[f"charge:{order}"] += 1
    return f"receipt-{order}-{cents}"


@Stent.durable(idempotent=True, version="2")
async def charge_v2(order: str, cents: int) -> str:
    runs[f"charge_v2:{order}"] += 1
    return f"v2-{order}"


@Stent.durable(idempotent=True, idempotency_key_func=lambda order, cents: f"order-{order}")
async def charge_by_order(order: str, cents: int) -> int:
    runs["by_order"] += 1
    return cents


@Stent.durable(cached=True, cache_ttl="1h")
async def exchange_rate(pair: str) -> float:
    runs[f"rate:{pair}"] += 1
    return 1.0 + runs[f"rate:{pair}"] / 100


@Stent.durable(idempotent=True)
async def slow_once(key: str) -> str:
    runs["slow"] += 1
    await gates["slow"].wait()
    return f"done {key}"


@Stent.durable(idempotent=True)
async def flaky_idempotent(key: str) -> str:
    runs["flaky"] += 1
    if runs["flaky"] == 1:
        raise RuntimeError("first call fails")
    return "second call stored"


@Stent.durable(idempotent=True, idempotency_key_func=lambda x: 42)  # type: ignore[arg-type,return-value]
async def bad_key(x: int) -> int:
    return x


@Stent.durable
async def pays_twice(order: str) -> list[str]:
    first = await charge(order, 100)
    second = await charge(order, 100)
    return [first, second]


@Stent.durable
async def rates() -> list[float]:
    return [await exchange_rate("EURUSD"), await exchange_rate("EURUSD")]


@Stent.durable
async def twin_slow() -> list[str]:
    return list(await asyncio.gather(slow_once("k"), slow_once("k")))


async def _wait(ex: Stent, eid: str) -> Result[Any]:
    return await asyncio.wait_for(ex.wait_for(eid), 20)


async def test_an_idempotent_step_runs_once_for_two_calls_with_one_key(stent_worker: Stent) -> None:
    result = await _wait(stent_worker, await stent_worker.dispatch(pays_twice, "o1"))
    assert result == Result.Ok(["receipt-o1-100", "receipt-o1-100"])
    assert runs["charge:o1"] == 1


async def test_an_idempotent_result_is_reused_across_executions(stent_worker: Stent) -> None:
    a = await stent_worker.dispatch(charge, "o2", 5)
    assert await _wait(stent_worker, a) == Result.Ok("receipt-o2-5")
    b = await stent_worker.dispatch(charge, "o2", 5)
    assert await _wait(stent_worker, b) == Result.Ok("receipt-o2-5")
    assert runs["charge:o2"] == 1
    progress = (await stent_worker.state_of(b)).progress
    assert any(p.get("event") == "cache_hit" for p in progress)


async def test_other_arguments_and_keyword_order_make_other_and_equal_keys(
    stent_worker: Stent,
) -> None:
    await _wait(stent_worker, await stent_worker.dispatch(charge, "o3", 1))
    await _wait(stent_worker, await stent_worker.dispatch(charge, "o3", 2))
    assert runs["charge:o3"] == 2
    await _wait(stent_worker, await stent_worker.dispatch(charge, cents=1, order="o3"))
    await _wait(stent_worker, await stent_worker.dispatch(charge, "o3", cents=1))
    assert runs["charge:o3"] == 2  # positional and keyword spellings of one call share a key


async def test_version_is_part_of_the_default_key(stent_worker: Stent) -> None:
    await _wait(stent_worker, await stent_worker.dispatch(charge_v2, "o4", 1))
    await _wait(stent_worker, await stent_worker.dispatch(charge_v2, "o4", 1))
    assert runs["charge_v2:o4"] == 1


async def test_a_custom_key_reused_with_other_arguments_is_a_conflict(stent_worker: Stent) -> None:
    assert await _wait(stent_worker, await stent_worker.dispatch(charge_by_order, "o5", 100)) \
        == Result.Ok(100)
    assert await _wait(stent_worker, await stent_worker.dispatch(charge_by_order, "o5", 100)) \
        == Result.Ok(100)
    result = await _wait(stent_worker, await stent_worker.dispatch(charge_by_order, "o5", 999))
    assert isinstance(result.error, IdempotencyConflictError)
    assert "order-o5" in str(result.error)
    assert runs["by_order"] == 1


async def test_a_failed_call_stores_nothing_and_the_next_call_runs(stent_worker: Stent) -> None:
    first = await _wait(stent_worker, await stent_worker.dispatch(flaky_idempotent, "k"))
    # its own retry policy retries it: the second attempt runs (nothing was stored)
    assert first == Result.Ok("second call stored")
    again = await _wait(stent_worker, await stent_worker.dispatch(flaky_idempotent, "k"))
    assert again == Result.Ok("second call stored")
    assert runs["flaky"] == 2


async def test_cached_entries_expire_after_their_ttl(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    w = await start_worker(ex)
    try:
        assert await _wait(ex, await ex.dispatch(rates)) == Result.Ok([1.01, 1.01])
        await clock.advance("59m")
        assert await _wait(ex, await ex.dispatch(exchange_rate, "EURUSD")) == Result.Ok(1.01)
        await clock.advance("2m")  # the 1 h ttl is over
        assert await _wait(ex, await ex.dispatch(exchange_rate, "EURUSD")) == Result.Ok(1.02)
        assert runs["rate:EURUSD"] == 2
    finally:
        await stop_worker(ex, w)


async def test_two_concurrent_calls_with_one_key_run_the_body_once(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(twin_slow)
    for _ in range(300):
        if runs["slow"]:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert runs["slow"] == 1  # the other call waits for the owner
    gates["slow"].set()
    assert await _wait(stent_worker, eid) == Result.Ok(["done k", "done k"])
    assert runs["slow"] == 1


async def test_two_executions_racing_on_one_key_run_the_body_once(stent_worker: Stent) -> None:
    a = await stent_worker.dispatch(slow_once, "race")
    b = await stent_worker.dispatch(slow_once, "race")
    for _ in range(300):
        if runs["slow"]:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    gates["slow"].set()
    assert await _wait(stent_worker, a) == Result.Ok("done race")
    assert await _wait(stent_worker, b) == Result.Ok("done race")
    assert runs["slow"] == 1


async def test_a_bad_idempotency_key_func_fails_at_dispatch(stent_executor: Stent) -> None:
    with pytest.raises(ValueError, match="idempotency_key_func"):
        await stent_executor.dispatch(bad_key, 1)
    assert await stent_executor.backend.count_executions() == 0


async def test_dispatch_with_an_idempotency_key_returns_the_first_execution(
    stent_executor: Stent,
) -> None:
    a = await stent_executor.dispatch(charge, "o6", 1, idempotency_key="req-1")
    b = await stent_executor.dispatch(charge, "o6", 1, idempotency_key="req-1")
    assert a == b
    assert await stent_executor.backend.count_executions() == 1


async def test_dispatch_reusing_a_key_with_other_arguments_raises(stent_executor: Stent) -> None:
    await stent_executor.dispatch(charge, "o7", 1, idempotency_key="req-2")
    with pytest.raises(IdempotencyConflictError, match="req-2"):
        await stent_executor.dispatch(charge, "o7", 2, idempotency_key="req-2")
    with pytest.raises(IdempotencyConflictError, match="req-2"):
        await stent_executor.dispatch(charge_v2, "o7", 1, idempotency_key="req-2")
    assert await stent_executor.backend.count_executions() == 1


async def test_dispatch_with_an_explicit_execution_id_is_idempotent(stent_executor: Stent) -> None:
    a = await stent_executor.dispatch(charge, "o8", 1, execution_id="order-o8")
    b = await stent_executor.dispatch(charge, "o8", 1, execution_id="order-o8")
    assert a == b == "order-o8"
    with pytest.raises(IdempotencyConflictError, match="order-o8"):
        await stent_executor.dispatch(charge, "o8", 3, execution_id="order-o8")


async def test_a_failing_cache_lookup_is_retried_not_failed(
    stent_worker: Stent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # storage errors while the key is looked up: retried while the lease lasts, like a
    # step write; the attempt does not fail and the body runs once
    real = stent_worker.backend.cache_claim
    errors = iter([ConnectionError("storage blip")] * 7)

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        err = next(errors, None)
        if err is not None:
            raise err
        return await real(*args, **kwargs)

    monkeypatch.setattr(stent_worker.backend, "cache_claim", flaky)
    eid = await stent_worker.dispatch(charge, "blip", 5)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 30)
    assert result == Result.Ok("receipt-blip-5")
    assert runs["charge:blip"] == 1
    assert next(errors, None) is None  # every planned error was hit
    root = await stent_worker.backend.get_task(eid)
    assert root is not None and (root.attempt, root.retries) == (1, 0)  # no attempt failed

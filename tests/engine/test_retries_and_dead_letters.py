"""Retries per RetryPolicy on the engine clock, dead letters, and their replay (SPEC §6)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
from stent import Result, RetryPolicy, Stent
from stent.backend import Backend
from stent_testing import FakeClock

from .helpers import start_worker, stop_worker

runs: Counter[str] = Counter()
attempt_times: list[float] = []
mode = {"fail": True}


class CardDeclined(Exception):
    def __init__(self, card: str, amount: int) -> None:
        super().__init__(card, amount)
        self.card = card
        self.amount = amount


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()
    attempt_times.clear()
    mode["fail"] = True


FLAKY_POLICY = RetryPolicy(max_attempts=3, initial_delay=10, backoff_factor=2, jitter=0,
                           retry_for=(ConnectionError,), no_retry_for=(ConnectionRefusedError,))


@Stent.durable(retry_policy=FLAKY_POLICY)
async def flaky() -> str:
    ctx = Stent.context()
    runs["flaky"] += 1
    attempt_times.append(ctx.attempt)
    if runs["flaky"] < 3:
        raise ConnectionError("upstream down")
    return "ok"


@Stent.durable
async def reserve(x: int) -> int:
    runs["reserve"] += 1
    return x + 1


@Stent.durable(retry_policy=RetryPolicy(max_attempts=2, initial_delay=1, jitter=0))
async def charge(x: int) -> int:
    runs["charge"] += 1
    if mode["fail"]:
        raise CardDeclined("visa-4242", x)
    return x * 2


@Stent.durable
async def order(x: int) -> int:
    runs["order"] += 1
    a = await reserve(x)
    return await charge(a)


@Stent.durable
async def order_with_compensation(x: int) -> str:
    a = await reserve(x)
    try:
        await charge(a)
    except CardDeclined as exc:
        return f"refunded {exc.card} {exc.amount}"
    return "charged"


@Stent.durable
async def order_beside_a_nap(x: int) -> int:
    runs["order"] += 1
    a = await reserve(x)
    # the nap is still pending when charge is dead-lettered and the workflow fails
    charged, _ = await asyncio.gather(charge(a), Stent.sleep(60))
    return charged


@Stent.durable(retry_policy=FLAKY_POLICY)
async def refused() -> None:
    runs["refused"] += 1
    raise ConnectionRefusedError("no")


async def test_retry_backoff_follows_the_policy_on_the_engine_clock(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    worker = await start_worker(ex)
    eid = await ex.dispatch(flaky)
    await clock.advance(0)
    assert runs["flaky"] == 1
    await clock.advance(9.9)
    assert runs["flaky"] == 1, "retried before initial_delay"
    await clock.advance(0.1)
    assert runs["flaky"] == 2
    await clock.advance(19.9)
    assert runs["flaky"] == 2, "second retry before initial_delay * backoff_factor"
    await clock.advance(0.1)
    assert runs["flaky"] == 3
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok("ok")
    assert attempt_times == [1, 2, 3]
    root = await stent_backend.get_task(eid)
    assert root is not None
    assert (root.attempt, root.retries) == (3, 2)
    assert root.retry_policy == FLAKY_POLICY.to_dict()
    assert RetryPolicy.from_dict(root.retry_policy) == FLAKY_POLICY
    state = await ex.state_of(eid)
    assert [p["event"] for p in state.progress].count("retrying") == 2
    await stop_worker(ex, worker)


async def test_no_retry_for_fails_at_once_with_a_dead_letter(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(refused)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 10)
    assert isinstance(result.error, ConnectionRefusedError)
    assert runs["refused"] == 1
    [letter] = await stent_worker.list_dead_letters()
    assert letter.reason == "not retryable: ConnectionRefusedError"


async def test_exhausted_step_fails_its_caller_with_the_original_error_type(
    stent_worker: Stent,
) -> None:
    eid = await stent_worker.dispatch(order, 5)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 10)
    assert not result.ok
    assert isinstance(result.error, CardDeclined)
    assert (result.error.card, result.error.amount) == ("visa-4242", 6)
    assert runs["charge"] == 2, "charge gets max_attempts=2"
    assert runs["order"] == 1, "the caller is not retried for a step's exhausted error"
    letters = await stent_worker.list_dead_letters()
    assert [(d.step_name, d.reason) for d in letters] == [
        (charge.name, "attempts exhausted (2 of 2)")
    ]
    state = await stent_worker.state_of(eid)
    assert state.state == "failed" and isinstance(state.error, CardDeclined)


async def test_caller_can_catch_a_failed_step_for_compensation(stent_worker: Stent) -> None:
    assert await order_with_compensation(5) == "refunded visa-4242 6"


async def test_replaying_a_dead_letter_resumes_the_workflow_without_rerunning_done_steps(
    stent_worker: Stent,
) -> None:
    eid = await stent_worker.dispatch(order, 5)
    assert not (await asyncio.wait_for(stent_worker.wait_for(eid), 10)).ok
    [letter] = await stent_worker.list_dead_letters()
    mode["fail"] = False  # the operator fixed the cause
    assert await stent_worker.replay_dead_letter(letter.task_id)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 10)
    assert result == Result.Ok(12)
    assert runs["reserve"] == 1, "a completed step ran again"
    assert runs["charge"] == 3
    assert await stent_worker.list_dead_letters() == []
    assert not await stent_worker.replay_dead_letter(letter.task_id)


async def test_a_failed_workflow_cancels_its_unfinished_steps_and_a_replay_resumes_them(
    stent_worker: Stent, stent_backend: Backend,
) -> None:
    eid = await stent_worker.dispatch(order_beside_a_nap, 5)
    assert not (await asyncio.wait_for(stent_worker.wait_for(eid), 10)).ok
    tasks = await stent_backend.list_tasks_for_execution(eid)
    nap = next(t for t in tasks if t.kind == "sleep")
    assert nap.state == "cancelled", "a failed execution left its sleep unfinished"
    assert not [t for t in tasks if t.state in ("pending", "waiting", "running")]
    [letter] = await stent_worker.list_dead_letters()
    mode["fail"] = False
    assert await stent_worker.replay_dead_letter(letter.task_id)
    # the replayed workflow awaits the nap it started, put back as it was
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 10)
    assert result == Result.Ok(12)
    assert runs["reserve"] == 1
    final = await stent_backend.get_task(nap.id)
    assert final is not None and final.state == "completed"


async def test_discarding_a_dead_letter_removes_only_the_entry(stent_worker: Stent) -> None:
    eid = await stent_worker.dispatch(order, 1)
    await asyncio.wait_for(stent_worker.wait_for(eid), 10)
    [letter] = await stent_worker.list_dead_letters()
    assert await stent_worker.get_dead_letter(letter.task_id) == letter
    assert await stent_worker.discard_dead_letter(letter.task_id)
    assert not await stent_worker.discard_dead_letter(letter.task_id)
    assert (await stent_worker.state_of(eid)).state == "failed"


def test_retry_delays_are_capped_and_jittered_within_bounds() -> None:
    policy = RetryPolicy(initial_delay=1, backoff_factor=3, max_delay=20, jitter=0.1)
    for attempt, base in [(1, 1.0), (2, 3.0), (3, 9.0), (4, 20.0), (10, 20.0)]:
        for _ in range(50):
            d = policy.delay_for(attempt)
            assert base * 0.9 - 1e-9 <= d <= min(20.0, base * 1.1) + 1e-9


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_attempts": 0}, "max_attempts"), ({"initial_delay": -1}, "initial_delay"),
     ({"backoff_factor": 0.5}, "backoff_factor"), ({"jitter": 2}, "jitter"),
     ({"max_delay": float("nan")}, "max_delay"), ({"retry_for": (int,)}, "retry_for")],
)
def test_invalid_retry_policy_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


async def test_delayed_dispatch_waits_for_its_time(stent_backend: Backend) -> None:
    clock = FakeClock()
    ex = Stent(stent_backend, clock=clock)
    worker = await start_worker(ex)
    eid = await ex.schedule(timedelta(minutes=5), reserve, 1)
    await clock.advance(299)
    assert runs["reserve"] == 0
    await clock.advance(2)
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok(2)
    await stop_worker(ex, worker)

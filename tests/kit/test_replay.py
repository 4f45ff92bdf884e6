"""``stent_testing.replay``: workflow code against a recorded history, no step run, and a
readable ``NonDeterminismError`` at the first divergence (SPEC §11)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from stent import NonDeterminismError, RetryPolicy, Stent
from stent_testing import (
    FakeClock,
    HistoryDivergence,
    load_history,
    record_history,
    replay,
    replay_async,
)

from .workflows import KIT, ORDER_RESULT, charge, order, reserve, ship

runs: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset_runs() -> None:
    runs.clear()


@Stent.durable(name="kit.test.counted_step", registry=KIT)
async def counted_step(x: int) -> int:
    runs["step"] += 1
    return x + 1


@Stent.durable(name="kit.test.counted_workflow", registry=KIT)
async def counted_workflow(x: int) -> int:
    runs["workflow"] += 1
    return await counted_step(await counted_step(x))


@Stent.durable(name="kit.test.refund", registry=KIT,
               retry_policy=RetryPolicy(max_attempts=1))
async def refund(order_id: str) -> str:
    raise ValueError(f"card of {order_id} expired")


@Stent.durable(name="kit.test.refund_or_credit", registry=KIT)
async def refund_or_credit(order_id: str) -> str:
    try:
        return await refund(order_id)
    except ValueError:
        return "store-credit"


@Stent.durable(name="kit.test.gives_up", registry=KIT,
               retry_policy=RetryPolicy(max_attempts=1))
async def gives_up(order_id: str) -> str:
    await reserve(order_id)
    raise LookupError(f"no stock for {order_id}")


@Stent.durable(name="kit.test.parent", registry=KIT)
async def parent(order_id: str) -> list[str]:
    return await order(order_id)


@pytest.fixture(scope="module")
def order_history() -> dict[str, Any]:
    return asyncio.run(record_history(order, "o-1", execution_id="o-1", registry=KIT))


# -- code that matches --------------------------------------------------------------------------------
async def test_replay_returns_what_the_code_returns() -> None:
    history = await record_history(order, "o-1", registry=KIT)
    result = await replay_async(history, order)
    assert result.value == ORDER_RESULT
    assert result.finished and result.outcome_matches


async def test_replay_runs_no_step_body() -> None:
    history = await record_history(counted_workflow, 1, registry=KIT)
    runs.clear()
    await replay_async(history, counted_workflow)
    assert runs == {"workflow": 1}, "only the workflow's own body ran"


async def test_recorded_step_errors_are_raised_into_the_workflow_again() -> None:
    history = await record_history(refund_or_credit, "o-9", registry=KIT)
    result = await replay_async(history, refund_or_credit)
    assert result.value == "store-credit"


async def test_a_failed_execution_replays_to_its_recorded_error() -> None:
    history = await record_history(gives_up, "o-3", registry=KIT)
    result = await replay_async(history, gives_up)
    assert isinstance(result.error, LookupError)
    assert result.recorded_state == "failed" and result.outcome_matches


async def test_code_waiting_on_something_else_times_out() -> None:
    history = await record_history(order, "o-1", registry=KIT)

    async def waits_forever(order_id: str) -> None:
        await reserve(order_id)
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError, match="not a durable step"):
        await replay_async(history, waits_forever, timeout=0.2)


def test_replay_works_from_synchronous_code(order_history: dict[str, Any]) -> None:
    assert replay(order_history, order).value == ORDER_RESULT


async def test_replay_works_inside_a_running_event_loop(order_history: dict[str, Any]) -> None:
    assert replay(order_history, order).value == ORDER_RESULT


def test_replay_reads_a_history_file(tmp_path: Path, order_history: dict[str, Any]) -> None:
    path = tmp_path / "order.json"
    path.write_text(json.dumps(order_history))
    assert replay(path, order).outcome_matches
    assert replay(str(path), order).outcome_matches


def test_replay_reads_json_text(order_history: dict[str, Any]) -> None:
    assert replay(json.dumps(order_history), order).outcome_matches


def test_replay_finds_the_workflow_by_its_recorded_name(order_history: dict[str, Any]) -> None:
    assert replay(order_history, registry=KIT).value == ORDER_RESULT


async def test_replay_of_a_child_workflow_by_task_id() -> None:
    history = await record_history(parent, "o-1", registry=KIT)
    child = next(t for t in history["tasks"] if t["step_name"] == order.name)
    result = await replay_async(history, order, task_id=child["id"])
    assert result.value == ORDER_RESULT and result.steps_replayed == 4


def test_a_history_for_another_function_is_refused(order_history: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"kit\.order"):
        replay(order_history, counted_workflow)


def test_something_that_is_not_a_history_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Stent history"):
        load_history({"format": "other"})


# -- code that diverges ----------------------------------------------------------------------------
async def order_with_a_new_price(order_id: str) -> list[str]:
    reservation = await reserve(order_id)
    await Stent.sleep("10m")
    charged = await charge(order_id, 4300)
    return [reservation, charged, await ship(order_id, reservation)]


async def order_that_ships_first(order_id: str) -> list[str]:
    reservation = await reserve(order_id)
    await Stent.sleep("10m")
    shipped = await ship(order_id, reservation)
    return [reservation, await charge(order_id, 4200), shipped]


async def order_with_an_extra_step(order_id: str) -> list[str]:
    result = await order_with_no_pause_change(order_id)
    await reserve("again")
    return result


async def order_with_no_pause_change(order_id: str) -> list[str]:
    reservation = await reserve(order_id)
    await Stent.sleep("10m")
    charged = await charge(order_id, 4200)
    return [reservation, charged, await ship(order_id, reservation)]


async def order_that_stops_early(order_id: str) -> list[str]:
    reservation = await reserve(order_id)
    await Stent.sleep("10m")
    return [reservation, await charge(order_id, 4200)]


async def order_with_a_longer_pause(order_id: str) -> list[str]:
    reservation = await reserve(order_id)
    await Stent.sleep("15m")
    return [reservation]


async def order_that_swallows_errors(order_id: str) -> list[str]:
    try:
        return await order_with_a_new_price(order_id)
    except Exception:
        return ["swallowed"]


def test_changed_arguments_raise_non_determinism_error(order_history: dict[str, Any]) -> None:
    with pytest.raises(NonDeterminismError):
        replay(order_history, order_with_a_new_price)


def test_the_error_names_the_step_and_both_calls(order_history: dict[str, Any]) -> None:
    with pytest.raises(HistoryDivergence) as caught:
        replay(order_history, order_with_a_new_price)
    err = caught.value
    assert err.seq == 2
    assert err.recorded == "kit.charge('o-1', 4200)"
    assert err.actual == "kit.charge('o-1', 4300)"


def test_the_error_message_shows_the_differing_argument(order_history: dict[str, Any]) -> None:
    with pytest.raises(HistoryDivergence) as caught:
        replay(order_history, order_with_a_new_price)
    message = str(caught.value)
    assert "diverged at step 2" in message
    assert "recorded: kit.charge('o-1', 4200)" in message
    assert "actual:   kit.charge('o-1', 4300)" in message
    assert "argument 2: recorded 4200, actual 4300" in message


def test_a_different_function_is_named_in_the_error(order_history: dict[str, Any]) -> None:
    with pytest.raises(HistoryDivergence, match=r"the function differs: recorded kit\.charge, "
                                                r"the code calls kit\.ship"):
        replay(order_history, order_that_ships_first)


def test_a_different_sleep_is_a_divergence(order_history: dict[str, Any]) -> None:
    with pytest.raises(HistoryDivergence, match=r"argument 1: recorded 600\.0, actual 900\.0"):
        replay(order_history, order_with_a_longer_pause)


def test_a_call_beyond_a_finished_history_is_a_divergence(
    order_history: dict[str, Any]
) -> None:
    with pytest.raises(HistoryDivergence,
                       match="the code makes a call the history does not have"):
        replay(order_history, order_with_an_extra_step)


def test_a_recorded_call_the_code_no_longer_makes_is_a_divergence(
    order_history: dict[str, Any]
) -> None:
    with pytest.raises(HistoryDivergence,
                       match="the history has a call the code no longer makes") as caught:
        replay(order_history, order_that_stops_early)
    assert caught.value.seq == 3


def test_a_divergence_swallowed_by_the_code_is_still_raised(
    order_history: dict[str, Any]
) -> None:
    with pytest.raises(HistoryDivergence):
        replay(order_history, order_that_swallows_errors)


# -- executions still running ----------------------------------------------------------------------
@pytest.fixture
async def running_order_history(stent_worker: Stent, fake_clock: FakeClock) -> dict[str, Any]:
    """The history of an order paused in its ten-minute sleep."""
    fake_clock.auto_advance = False
    eid = await stent_worker.dispatch(order, "o-1")
    for _ in range(200):
        history = await stent_worker.history(eid)
        if any(t["step_name"] == "stent.sleep" for t in history["tasks"]):
            return history
        await asyncio.sleep(0.01)
    raise AssertionError("the order never reached its sleep")


async def test_replay_of_a_running_execution_stops_where_it_waits(
    running_order_history: dict[str, Any]
) -> None:
    result = await replay_async(running_order_history, order)
    assert not result.finished
    assert result.stopped_at == 1, "the sleep at step 1 has not fired yet"


async def test_new_calls_past_a_running_history_are_not_divergences(
    running_order_history: dict[str, Any]
) -> None:
    result = await replay_async(running_order_history, order_with_a_new_price)
    assert not result.finished and result.steps_replayed == 2


async def test_a_running_history_still_checks_the_steps_it_has(
    running_order_history: dict[str, Any]
) -> None:
    with pytest.raises(HistoryDivergence, match=r"recorded: stent\.sleep"):
        await replay_async(running_order_history, order_with_a_longer_pause)

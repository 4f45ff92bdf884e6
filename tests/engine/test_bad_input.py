"""Bad input is refused at the earliest point with a typed error naming it; nothing is written."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from stent import (
    ExecutionNotFinished,
    ExecutionNotFound,
    FunctionRegistry,
    PayloadTooLargeError,
    SerializationError,
    Stent,
    UnregisteredFunctionError,
)
from stent.backend import Backend
from stent_testing import InMemoryBackend


@Stent.durable
async def echo(*args: Any, **kwargs: Any) -> Any:
    return [list(args), kwargs]


@Stent.durable
async def passes_a_socket() -> str:
    try:
        await echo(1, {"conn": object()})
    except SerializationError as exc:
        return str(exc)
    return "no error"


async def not_durable(x: int) -> int:
    return x


@pytest.fixture
def ex(stent_backend: Backend) -> Stent:
    return Stent(stent_backend)


async def test_unregistered_function_name_lists_registered_names(stent_backend: Backend) -> None:
    registry = FunctionRegistry()

    async def charge_card() -> None:
        return None

    Stent.durable(name="billing:charge_card", registry=registry)(charge_card)
    ex = Stent(stent_backend, function_registry=registry)
    with pytest.raises(UnregisteredFunctionError) as info:
        await ex.dispatch("billing:charge")
    assert "billing:charge" in str(info.value)
    assert "registered: billing:charge_card" in str(info.value)
    assert await ex.backend.count_executions() == 0


def test_unregistered_function_error_shows_close_names_first() -> None:
    names = [f"app:f{i}" for i in range(50)] + ["billing:charge_card"]
    message = str(UnregisteredFunctionError("billing:charge", names))
    assert "(registered: billing:charge_card, " in message
    assert "51 in all" in message


async def test_plain_async_function_is_refused(ex: Stent) -> None:
    with pytest.raises(UnregisteredFunctionError, match="not_durable"):
        await ex.dispatch(not_durable, 1)  # type: ignore[arg-type]


async def test_non_serializable_argument_names_its_path_and_writes_nothing(ex: Stent) -> None:
    with pytest.raises(SerializationError) as info:
        await ex.dispatch(echo, 1, {"conn": object()})
    assert "args[1]['conn']" in str(info.value)
    with pytest.raises(SerializationError, match=r"kwargs\['when'\]"):
        await ex.dispatch(echo, when=float("nan"))
    assert await ex.backend.count_executions() == 0
    assert await ex.backend.count_tasks() == 0


async def test_non_serializable_step_argument_fails_the_call_inside_the_task(
    stent_worker: Stent,
) -> None:
    eid = await stent_worker.dispatch(passes_a_socket)
    result = await asyncio.wait_for(stent_worker.wait_for(eid), 10)
    assert "args[1]['conn']" in result.unwrap()
    tasks = await stent_worker.backend.list_tasks_for_execution(eid)
    assert [t.step_name for t in tasks] == [passes_a_socket.name], "no step row was written"


@pytest.mark.parametrize(
    ("kw", "text"),
    [({"delay": "5x"}, "5x"), ({"delay": "1h1h"}, "1h1h"), ({"max_duration": -1}, "-1"),
     ({"max_duration": ""}, "''"), ({"delay": "ten minutes"}, "ten minutes"),
     ({"max_duration": "1h", "expiry": "2h"}, "not both")],
)
async def test_malformed_durations_are_refused_naming_the_text(
    ex: Stent, kw: dict[str, Any], text: str
) -> None:
    with pytest.raises(ValueError, match=text.replace("(", r"\(")):
        await ex.dispatch(echo, **kw)
    assert await ex.backend.count_executions() == 0


@pytest.mark.parametrize(
    ("kw", "text"),
    [({"queue": "bad queue!"}, "queue"), ({"tags": ["ok", "drop table;"]}, "tag"),
     ({"tags": "gpu"}, "tags"), ({"priority": "high"}, "priority"),
     ({"execution_id": ""}, "execution_id"), ({"idempotency_key": 5}, "idempotency_key")],
)
async def test_invalid_routing_values_are_refused(ex: Stent, kw: dict[str, Any], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        await ex.dispatch(echo, **kw)
    assert await ex.backend.count_executions() == 0


def test_unknown_serializer_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="yaml"):
        Stent(InMemoryBackend(), serializer="yaml")


def test_pickle_without_a_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STENT_PICKLE_KEY", raising=False)
    with pytest.raises(ValueError, match="STENT_PICKLE_KEY"):
        Stent(InMemoryBackend(), serializer="pickle")


async def test_payload_over_the_limit_is_refused_before_writing() -> None:
    backend = InMemoryBackend()
    ex = Stent(backend, max_payload_bytes=1000)
    with pytest.raises(PayloadTooLargeError, match="max_payload_bytes=1000"):
        await ex.dispatch(echo, "x" * 2000)
    assert await backend.count_executions() == 0


async def test_unknown_execution_id_raises_execution_not_found(ex: Stent) -> None:
    for call in (ex.wait_for, ex.result_of, ex.state_of, ex.history):
        with pytest.raises(ExecutionNotFound, match="nope"):
            await call("nope")  # type: ignore[operator]


async def test_result_of_an_unfinished_execution_raises(ex: Stent) -> None:
    eid = await ex.dispatch(echo, 1)
    with pytest.raises(ExecutionNotFinished):
        await ex.result_of(eid)


@pytest.mark.parametrize(
    ("options", "text"),
    [({"queue": "a b"}, "queue"), ({"max_concurrent": 0}, "max_concurrent"),
     ({"timeout": "soon"}, "soon"), ({"retry_policy": 3}, "retry_policy"),
     ({"bogus": 1}, "bogus"), ({"cache_ttl": -5}, "-5"), ({"max_concurrent": -2}, "-2"),
     ({"max_concurrent": 1.5}, "1.5"), ({"max_concurrent": True}, "True"),
     ({"timeout": float("nan")}, "nan"), ({"timeout": float("inf")}, "inf"),
     ({"cache_ttl": "1y"}, "1y"), ({"idempotency_key_func": "order_id"}, "idempotency_key_func"),
     ({"tags": ["ok", "semi;colon"]}, "semi;colon"), ({"priority": 1.5}, "priority"),
     ({"name": "  "}, "name")],
)
def test_bad_decorator_options_fail_at_decoration(options: dict[str, Any], text: str) -> None:
    async def fn() -> None:
        return None

    with pytest.raises((ValueError, TypeError), match=text):
        Stent.durable(**options)(fn)


def test_decorating_a_sync_function_is_refused() -> None:
    def sync() -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        Stent.durable(sync)  # type: ignore[arg-type]


def test_a_name_taken_by_another_function_is_refused() -> None:
    from stent import DuplicateFunctionError

    async def other() -> None:
        return None

    with pytest.raises(DuplicateFunctionError, match=echo.name):
        Stent.durable(name=echo.name)(other)


async def test_same_execution_id_or_idempotency_key_returns_the_first_execution(ex: Stent) -> None:
    first = await ex.dispatch(echo, 1, execution_id="order-1")
    assert await ex.dispatch(echo, 1, execution_id="order-1") == first == "order-1"
    a = await ex.dispatch(echo, 2, idempotency_key="k-1")
    assert await ex.dispatch(echo, 2, idempotency_key="k-1") == a
    assert await ex.backend.count_executions() == 2


@pytest.mark.parametrize("bad", [None, 123, ""])
async def test_dead_letter_calls_refuse_bad_task_ids(ex: Stent, bad: Any) -> None:
    for call in (ex.get_dead_letter, ex.discard_dead_letter, ex.replay_dead_letter):
        with pytest.raises(ValueError, match="task id"):
            await call(bad)
    with pytest.raises(ValueError, match="reset_retries"):
        await ex.replay_dead_letter("x", reset_retries="no")  # type: ignore[arg-type]

"""Execution effects: ``record_effect`` changes counters or custom state exactly once, with
the born-completed step that records it."""

from __future__ import annotations

from typing import Any

import pytest
from stent.backend import Backend
from stent.errors import LeaseLostError
from stent.records import ExecutionEffect, NewTask, TaskRecord

from .arrange import start, stored_execution, stored_task
from .base import ConformanceBase
from .builders import at, new_task


def effect_step(parent: TaskRecord, seq: int, name: str = "stent.increment") -> NewTask:
    """The born-completed step that records an effect at ``(parent.id, parent.attempt, seq)``."""
    return new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=seq, name=name,
                    kind="value", state="completed", result=b"null")


def increment(name: str, delta: int) -> ExecutionEffect:
    return ExecutionEffect(kind="increment", name=name, delta=delta)


def set_state(name: str, value_json: str) -> ExecutionEffect:
    return ExecutionEffect(kind="set_state", name=name, value_json=value_json)


async def record(
    backend: Backend, parent: TaskRecord, seq: int, effect: ExecutionEffect, now: float = 1
) -> tuple[TaskRecord, bool]:
    return await backend.record_effect(parent.id, parent.fence, effect_step(parent, seq), effect,
                                       at(now))


class EffectContract(ConformanceBase):
    """Counters and custom state written together with their step, never twice."""

    @pytest.mark.asyncio
    async def test_effect_step_is_born_completed(self, backend: Backend) -> None:
        new, root = await start(backend)
        step = effect_step(root, 0)
        row, created = await backend.record_effect(root.id, root.fence, step,
                                                   increment("n", 1), at(1))
        assert created is True
        assert (row.id, row.state, row.result) == (step.id, "completed", b"null")
        stored = await stored_task(backend, step.id)
        assert (stored.execution_id, stored.state) == (new.id, "completed")
        steps = await backend.load_steps(root.id, root.attempt)
        assert [(s.task_id, s.state) for s in steps] == [(step.id, "completed")]

    @pytest.mark.asyncio
    async def test_increment_is_applied_once_when_its_step_is_replayed(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        first, created = await record(backend, root, 0, increment("items", 2))
        assert created is True
        assert (await stored_execution(backend, new.id)).counters == {"items": 2}
        again, created = await record(backend, root, 0, increment("items", 2), now=2)
        assert created is False and again.id == first.id
        assert (await stored_execution(backend, new.id)).counters == {"items": 2}

    @pytest.mark.asyncio
    async def test_increments_accumulate_per_counter(self, backend: Backend) -> None:
        new, root = await start(backend)
        for seq, (name, delta) in enumerate(
            [("items", 2), ("items", 3), ("errors", 1), ("items", -1)]
        ):
            await record(backend, root, seq, increment(name, delta))
        assert (await stored_execution(backend, new.id)).counters == {"items": 4, "errors": 1}

    @pytest.mark.asyncio
    async def test_set_state_overwrites_and_a_replay_does_not_revert_it(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        await record(backend, root, 0, set_state("phase", '"loading"'))
        await record(backend, root, 1, set_state("phase", '{"done": [1, 2], "ok": true}'))
        await record(backend, root, 2, set_state("note", "null"))
        _, created = await record(backend, root, 0, set_state("phase", '"loading"'), now=3)
        assert created is False
        state: dict[str, Any] = (await stored_execution(backend, new.id)).custom_state
        assert state == {"phase": {"done": [1, 2], "ok": True}, "note": None}

    @pytest.mark.asyncio
    async def test_effect_is_fenced_on_its_parent(self, backend: Backend) -> None:
        new, root = await start(backend)
        step = effect_step(root, 0)
        with pytest.raises(LeaseLostError):
            await backend.record_effect(root.id, root.fence + 1, step, increment("n", 1), at(1))
        assert await backend.get_task(step.id) is None
        ex = await stored_execution(backend, new.id)
        assert (ex.counters, ex.custom_state) == ({}, {})

    @pytest.mark.asyncio
    async def test_no_effect_under_a_cancelling_execution(self, backend: Backend) -> None:
        new, root = await start(backend)
        await backend.cancel_execution(new.id, b"cancelled", at(1))
        step = effect_step(root, 0, name="stent.set_state")
        with pytest.raises(LeaseLostError):
            await backend.record_effect(root.id, root.fence, step, set_state("s", "1"), at(2))
        assert await backend.get_task(step.id) is None
        assert (await stored_execution(backend, new.id)).custom_state == {}

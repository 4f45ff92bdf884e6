"""Steps and replay keys: ``create_step`` (insert-if-absent on the key) and ``load_steps``."""

from __future__ import annotations

import dataclasses

import pytest
from stent.backend import Backend
from stent.records import Lease, StepRecord

from .arrange import (
    LEASE_UNTIL,
    add_step,
    claim_only,
    running_step,
    start,
    stored_task,
)
from .base import ConformanceBase
from .builders import OTHER, at, claim_filter, new_task


class StepContract(ConformanceBase):
    """Child tasks at their step keys ``(parent, parent_attempt, seq)``."""

    @pytest.mark.asyncio
    async def test_create_step_inserts_child_at_its_key(self, backend: Backend) -> None:
        new, parent = await start(backend)
        step = new_task(
            parent_id=parent.id, parent_attempt=parent.attempt, seq=3, name=OTHER,
            args=b'{"x": 1}', queue="io", tags=("ssd",), priority=4, due_at=at(7),
            retry_policy={"max_attempts": 1}, timeout_s=2.0, idempotency_key="idem-1",
        )
        child, created = await backend.create_step(parent.id, parent.fence, step, at(5))
        assert created is True
        assert child.id == step.id
        stored = await stored_task(backend, step.id)
        assert stored.execution_id == new.id
        assert (stored.parent_id, stored.parent_attempt, stored.seq) == (parent.id, 1, 3)
        assert (stored.step_name, stored.kind, stored.state) == (OTHER, "function", "pending")
        assert (stored.args, stored.arg_digest) == (b'{"x": 1}', step.arg_digest)
        assert (stored.queue, tuple(stored.tags), stored.priority) == ("io", ("ssd",), 4)
        assert stored.retry_policy == {"max_attempts": 1}
        assert stored.timeout_s == 2.0
        assert stored.idempotency_key == "idem-1"
        assert stored.worker_id is None
        self.assert_time(stored.due_at, at(7))
        self.assert_time(stored.created_at, at(5))

    @pytest.mark.asyncio
    async def test_create_step_at_taken_key_returns_existing_row(
        self, backend: Backend
    ) -> None:
        _, parent = await start(backend)
        first = await add_step(backend, parent, 0)
        again = new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=0)
        row, created = await backend.create_step(parent.id, parent.fence, again, at(1))
        assert created is False
        assert row.id == first.id
        assert await backend.get_task(again.id) is None

    @pytest.mark.asyncio
    async def test_taken_key_with_other_arguments_returns_recorded_call(
        self, backend: Backend
    ) -> None:
        _, parent = await start(backend)
        first = await add_step(backend, parent, 0, args=b"[1]")
        other = new_task(
            parent_id=parent.id, parent_attempt=parent.attempt, seq=0, name=OTHER, args=b"[2]"
        )
        row, created = await backend.create_step(parent.id, parent.fence, other, at(1))
        assert created is False
        assert (row.id, row.step_name, row.args) == (first.id, first.step_name, b"[1]")
        assert row.arg_digest == first.arg_digest != other.arg_digest

    @pytest.mark.asyncio
    async def test_taken_key_returns_row_in_its_current_state(self, backend: Backend) -> None:
        _, parent = await start(backend)
        child = await running_step(backend, parent, 0)
        await backend.complete_task(child.id, child.fence, b'"done"', at(1))
        again = new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=0)
        row, created = await backend.create_step(parent.id, parent.fence, again, at(2))
        assert created is False
        assert (row.state, row.result) == ("completed", b'"done"')

    @pytest.mark.asyncio
    async def test_same_seq_at_next_attempt_is_a_new_step(self, backend: Backend) -> None:
        _, parent = await start(backend)
        first = await add_step(backend, parent, 0, due_at=at(1000))  # not claimed below
        await backend.retry_task(parent.id, parent.fence, b"boom", at(1), at(1))
        retried = await claim_only(backend, parent.id, now=at(1))
        assert retried.attempt == parent.attempt + 1
        second = await add_step(backend, retried, 0, now=at(2))
        assert second.id != first.id
        assert second.parent_attempt == retried.attempt

    @pytest.mark.asyncio
    async def test_step_with_lease_is_born_running(self, backend: Backend) -> None:
        _, parent = await start(backend)
        lease = Lease(worker_id="w-local", expires_at=at(45))
        child = await add_step(backend, parent, 0, lease=lease, now=at(2))
        stored = await stored_task(backend, child.id)
        assert (stored.state, stored.fence, stored.worker_id) == ("running", 1, "w-local")
        assert child.fence == 1
        self.assert_time(stored.lease_expires_at, at(45))

    @pytest.mark.asyncio
    async def test_step_born_running_can_be_completed_with_fence_one(
        self, backend: Backend
    ) -> None:
        _, parent = await start(backend)
        child = await running_step(backend, parent, 0)
        assert await backend.complete_task(child.id, 1, b"1", at(1)) is True

    @pytest.mark.asyncio
    async def test_step_born_running_is_not_claimable_while_leased(
        self, backend: Backend
    ) -> None:
        _, parent = await start(backend)
        await running_step(backend, parent, 0)
        assert await backend.claim("w-2", claim_filter(), 10, at(1), at(90)) == []

    @pytest.mark.asyncio
    async def test_step_without_lease_is_claimable(self, backend: Backend) -> None:
        _, parent = await start(backend)
        child = await add_step(backend, parent, 0)
        claimed = await claim_only(backend, child.id, worker="w-2", now=at(1))
        assert claimed.parent_id == parent.id

    @pytest.mark.asyncio
    async def test_load_steps_returns_that_attempts_children_by_seq(
        self, backend: Backend
    ) -> None:
        _, parent = await start(backend)
        for seq in (2, 0, 1):
            await add_step(backend, parent, seq, args=f"[{seq}]".encode(), due_at=at(1000))
        await backend.retry_task(parent.id, parent.fence, b"boom", at(1), at(1))
        retried = await claim_only(backend, parent.id, now=at(1))
        await add_step(backend, retried, 0, now=at(2))
        steps = await backend.load_steps(parent.id, 1)
        assert [s.seq for s in steps] == [0, 1, 2]
        assert all(isinstance(s, StepRecord) for s in steps)
        assert [s.arg_digest for s in steps] == [new_task(args=f"[{i}]".encode()).arg_digest
                                                 for i in range(3)]
        assert [s.seq for s in await backend.load_steps(parent.id, 2)] == [0]

    @pytest.mark.asyncio
    async def test_load_steps_reports_state_result_and_error(self, backend: Backend) -> None:
        _, parent = await start(backend)
        done = await running_step(backend, parent, 0)
        failed = await running_step(backend, parent, 1, name=OTHER)
        pending = await add_step(backend, parent, 2, kind="sleep", name="stent.sleep")
        await backend.complete_task(done.id, done.fence, b'"ok"', at(1))
        await backend.fail_task(failed.id, failed.fence, b'"bad"', at(1), None)
        steps = {s.seq: s for s in await backend.load_steps(parent.id, parent.attempt)}
        assert (steps[0].task_id, steps[0].state, steps[0].result) == (done.id, "completed",
                                                                      b'"ok"')
        assert (steps[1].task_id, steps[1].state, steps[1].error) == (failed.id, "failed",
                                                                     b'"bad"')
        assert (steps[1].step_name, steps[1].kind) == (OTHER, "function")
        assert (steps[2].task_id, steps[2].state, steps[2].kind) == (pending.id, "pending",
                                                                    "sleep")
        assert steps[2].result is None and steps[2].error is None

    @pytest.mark.asyncio
    async def test_load_steps_of_task_without_children_is_empty(
        self, backend: Backend
    ) -> None:
        _, parent = await start(backend)
        assert await backend.load_steps(parent.id, parent.attempt) == []

    @pytest.mark.asyncio
    async def test_load_steps_does_not_return_grandchildren(self, backend: Backend) -> None:
        _, parent = await start(backend)
        child = await running_step(backend, parent, 0)
        await add_step(backend, child, 0)
        steps = await backend.load_steps(parent.id, parent.attempt)
        assert [s.task_id for s in steps] == [child.id]

    @pytest.mark.asyncio
    async def test_value_step_is_born_completed_with_its_result(
        self, backend: Backend
    ) -> None:
        _, parent = await start(backend)
        value = await add_step(
            backend, parent, 0, name="stent.now", kind="value", state="completed",
            result=b'"2030-01-02T03:04:05Z"', now=at(1),
        )
        stored = await stored_task(backend, value.id)
        assert (stored.kind, stored.state) == ("value", "completed")
        assert stored.result == b'"2030-01-02T03:04:05Z"'
        (outcome,) = await backend.get_outcomes([value.id])
        assert (outcome.state, outcome.result) == ("completed", b'"2030-01-02T03:04:05Z"')
        (step,) = await backend.load_steps(parent.id, parent.attempt)
        assert (step.state, step.result) == ("completed", b'"2030-01-02T03:04:05Z"')

    @pytest.mark.asyncio
    async def test_value_step_is_never_claimed(self, backend: Backend) -> None:
        _, parent = await start(backend)
        await add_step(backend, parent, 0, kind="value", state="completed", result=b"1")
        assert await backend.claim("w", claim_filter(), 10, at(30), at(90)) == []

    @pytest.mark.asyncio
    async def test_step_belongs_to_parents_execution(self, backend: Backend) -> None:
        new, parent = await start(backend)
        child = await add_step(backend, parent, 0, lease=Lease("w", LEASE_UNTIL))
        grandchild = await add_step(backend, child, 0)
        assert (await stored_task(backend, grandchild.id)).execution_id == new.id
        assert (await stored_task(backend, grandchild.id)).parent_id == child.id

    @pytest.mark.asyncio
    async def test_step_born_failed_gets_its_error_and_dead_letter(self, backend: Backend) -> None:
        _, parent = await start(backend)
        step = dataclasses.replace(
            new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=0),
            state="failed", error=b"boom", retries=2, attempt=3,
            dead_letter_reason="attempts exhausted (3 of 3)",
        )
        child, created = await backend.create_step(parent.id, parent.fence, step, at(4))
        assert created and child.state == "failed"
        stored = await stored_task(backend, step.id)
        assert (stored.error, stored.attempt, stored.retries) == (b"boom", 3, 2)
        assert stored.finished_at is not None
        letter = await backend.get_dead_letter(step.id)
        assert letter is not None and letter.reason == "attempts exhausted (3 of 3)"
        assert (letter.error, letter.retries) == (b"boom", 2)
        (outcome,) = await backend.get_outcomes([step.id])
        assert (outcome.state, outcome.error) == ("failed", b"boom")

    @pytest.mark.asyncio
    async def test_step_born_failed_without_reason_has_no_dead_letter(
        self, backend: Backend
    ) -> None:
        _, parent = await start(backend)
        step = dataclasses.replace(
            new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=0),
            state="failed", error=b"boom",
        )
        await backend.create_step(parent.id, parent.fence, step, at(4))
        assert await backend.get_dead_letter(step.id) is None

    @pytest.mark.asyncio
    async def test_step_born_waiting_for_a_retry_is_claimable_only_when_due(
        self, backend: Backend
    ) -> None:
        new, parent = await start(backend)
        step = dataclasses.replace(
            new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=0, due_at=at(20)),
            error=b"flaky", retries=1, attempt=2,
        )
        await backend.create_step(parent.id, parent.fence, step, at(4))
        stored = await stored_task(backend, step.id)
        assert (stored.state, stored.attempt, stored.retries, stored.error) == (
            "pending", 2, 1, b"flaky")
        assert await backend.claim("w", claim_filter(), 10, at(19), at(120)) == []
        (claimed,) = await backend.claim("w", claim_filter(), 10, at(21), at(120))
        assert claimed.id == step.id
        ex = await backend.get_execution(new.id)
        assert ex is not None
        assert [p["event"] for p in ex.progress][-1] == "retrying"

"""Cancellation and deadlines: ``cancel_execution``, ``cancel_task``, ``expire_executions``,
and how every other operation treats the tasks of a stopping execution."""

from __future__ import annotations

import pytest
from stent.backend import Backend
from stent.errors import LeaseLostError
from stent.records import Lease

from .arrange import LEASE_UNTIL, add_step, dispatch, start, stored_task
from .base import ConformanceBase
from .builders import at, claim_filter, new_task

ERROR = b"cancelled-error"
TIMEOUT = b"timeout-error"


async def _state(backend: Backend, execution_id: str) -> str:
    ex = await backend.get_execution(execution_id)
    assert ex is not None
    return ex.state


class CancellationContract(ConformanceBase):
    """What cancelling an execution, and its deadline passing, do to it and its tasks."""

    @pytest.mark.asyncio
    async def test_cancelling_an_unstarted_execution_cancels_it_at_once(
        self, backend: Backend
    ) -> None:
        new = await dispatch(backend)
        assert await backend.cancel_execution(new.id, ERROR, at(1)) == "cancelled"
        ex = await backend.get_execution(new.id)
        assert ex is not None and ex.state == "cancelled" and ex.error == ERROR
        assert ex.finished_at is not None
        assert [p["event"] for p in ex.progress][-2:] == ["cancelling", "cancelled"]
        assert (await stored_task(backend, new.root.id)).state == "cancelled"
        assert await backend.claim("w", claim_filter(), 10, at(2), at(60)) == []

    @pytest.mark.asyncio
    async def test_cancelling_a_running_execution_waits_for_its_running_tasks(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        child = await add_step(backend, root, 0)
        assert await backend.cancel_execution(new.id, ERROR, at(1)) == "cancelling"
        assert (await stored_task(backend, child.id)).state == "cancelled"
        assert (await stored_task(backend, root.id)).state == "running"
        assert await backend.cancel_task(root.id, root.fence, at(2))
        assert (await stored_task(backend, root.id)).state == "cancelled"
        assert await _state(backend, new.id) == "cancelled"

    @pytest.mark.asyncio
    async def test_cancel_task_is_fenced(self, backend: Backend) -> None:
        new, root = await start(backend)
        await backend.cancel_execution(new.id, ERROR, at(1))
        assert not await backend.cancel_task(root.id, root.fence + 1, at(2))
        assert await _state(backend, new.id) == "cancelling"

    @pytest.mark.asyncio
    async def test_cancelling_a_finished_execution_changes_nothing(self, backend: Backend) -> None:
        new, root = await start(backend)
        assert await backend.complete_task(root.id, root.fence, b"1", at(1))
        assert await backend.cancel_execution(new.id, ERROR, at(2)) == "completed"
        ex = await backend.get_execution(new.id)
        assert ex is not None and (ex.state, ex.result, ex.error) == ("completed", b"1", None)

    @pytest.mark.asyncio
    async def test_cancelling_an_unknown_execution_returns_none(self, backend: Backend) -> None:
        assert await backend.cancel_execution("no-such-execution", ERROR, at(1)) is None

    @pytest.mark.asyncio
    async def test_no_step_starts_under_a_cancelling_execution(self, backend: Backend) -> None:
        new, root = await start(backend)
        await backend.cancel_execution(new.id, ERROR, at(1))
        step = new_task(parent_id=root.id, parent_attempt=root.attempt, seq=0)
        with pytest.raises(LeaseLostError):
            await backend.create_step(root.id, root.fence, step, at(2))
        assert await backend.get_task(step.id) is None

    @pytest.mark.asyncio
    async def test_heartbeat_of_a_cancelled_execution_stops_the_task(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        await backend.cancel_execution(new.id, ERROR, at(1))
        lost = await backend.renew_leases("worker-1", [(root.id, root.fence)], at(90))
        assert lost == {root.id}
        assert (await stored_task(backend, root.id)).state == "cancelled"
        assert await _state(backend, new.id) == "cancelled"

    @pytest.mark.asyncio
    async def test_a_late_completion_cannot_complete_a_cancelling_execution(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        await backend.cancel_execution(new.id, ERROR, at(1))
        assert await backend.complete_task(root.id, root.fence, b"late", at(2))
        ex = await backend.get_execution(new.id)
        assert ex is not None and ex.state == "cancelled" and ex.result is None
        assert ex.error == ERROR

    @pytest.mark.asyncio
    async def test_no_retry_is_scheduled_in_a_cancelling_execution(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        await backend.cancel_execution(new.id, ERROR, at(1))
        assert await backend.retry_task(root.id, root.fence, b"e", at(5), at(2))
        assert (await stored_task(backend, root.id)).state == "cancelled"
        assert await backend.claim("w", claim_filter(), 10, at(10), at(60)) == []
        assert await _state(backend, new.id) == "cancelled"

    @pytest.mark.asyncio
    async def test_a_suspension_in_a_cancelling_execution_cancels_the_task(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        await backend.cancel_execution(new.id, ERROR, at(1))
        assert await backend.suspend_task(root.id, root.fence, [], at(2))
        assert (await stored_task(backend, root.id)).state == "cancelled"
        assert await _state(backend, new.id) == "cancelled"

    @pytest.mark.asyncio
    async def test_orphaned_tasks_of_a_cancelling_execution_are_cancelled_not_claimed(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)  # its worker dies: the lease runs out at 60 s
        await backend.cancel_execution(new.id, ERROR, at(1))
        assert await backend.claim("w2", claim_filter(), 10, at(61), at(120)) == []
        assert await backend.expire_executions(TIMEOUT, at(61)) == []
        assert (await stored_task(backend, root.id)).state == "cancelled"
        assert await _state(backend, new.id) == "cancelled"

    @pytest.mark.asyncio
    async def test_an_execution_past_its_deadline_times_out_with_its_tasks(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend, deadline=at(30))
        child = await add_step(backend, root, 0, lease=Lease("worker-1", LEASE_UNTIL))
        pending = await add_step(backend, root, 1)
        assert await backend.expire_executions(TIMEOUT, at(29)) == []
        assert await backend.expire_executions(TIMEOUT, at(31)) == [new.id]
        ex = await backend.get_execution(new.id)
        assert ex is not None and (ex.state, ex.error) == ("timed_out", TIMEOUT)
        assert ex.finished_at is not None and ex.progress[-1]["event"] == "timed_out"
        for task in (root, child, pending):
            assert (await stored_task(backend, task.id)).state == "cancelled"
        # nothing the old workers write changes it any more
        assert not await backend.complete_task(child.id, 1, b"1", at(32))
        assert not await backend.complete_task(root.id, root.fence, b"1", at(32))
        assert await _state(backend, new.id) == "timed_out"
        assert await backend.expire_executions(TIMEOUT, at(40)) == []

    @pytest.mark.asyncio
    async def test_executions_without_a_deadline_or_finished_never_time_out(
        self, backend: Backend
    ) -> None:
        done, root = await start(backend, deadline=at(30))
        plain = await dispatch(backend)
        assert await backend.complete_task(root.id, root.fence, b"1", at(5))
        assert await backend.expire_executions(TIMEOUT, at(3600)) == []
        assert await _state(backend, plain.id) == "pending"
        assert await _state(backend, done.id) == "completed"

    @pytest.mark.asyncio
    async def test_a_cancelled_execution_is_not_revived_by_a_dead_letter_replay(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        child = await add_step(backend, root, 0, lease=Lease("worker-1", LEASE_UNTIL))
        assert await backend.fail_task(child.id, 1, b"boom", at(1), "attempts exhausted")
        await backend.cancel_execution(new.id, ERROR, at(2))
        assert not await backend.replay_dead_letter(child.id, queue=None, reset_retries=True,
                                                    now=at(3))
        assert (await stored_task(backend, child.id)).state == "failed"

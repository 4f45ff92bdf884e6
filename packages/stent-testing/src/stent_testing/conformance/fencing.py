"""Fencing: a worker that no longer holds a task (stale fence) can write nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from stent.backend import Backend
from stent.errors import LeaseLostError

from .arrange import claim_only, dispatch, running_step, start, stored_execution, stored_task
from .base import ConformanceBase
from .builders import at, claim_filter, new_id, new_task

FencedWrite = Callable[[Backend, str, int], Awaitable[bool]]

FENCED_WRITES: dict[str, FencedWrite] = {
    "complete": lambda b, tid, fence: b.complete_task(tid, fence, b'"late"', at(10)),
    "fail": lambda b, tid, fence: b.fail_task(tid, fence, b"late", at(10), "exhausted"),
    "retry": lambda b, tid, fence: b.retry_task(tid, fence, b"late", at(20), at(10)),
    "release": lambda b, tid, fence: b.release_task(tid, fence, at(10)),
    "suspend": lambda b, tid, fence: b.suspend_task(tid, fence, [], at(10)),
}


class FencingContract(ConformanceBase):
    """Every worker write is conditioned on (task id, fence)."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("offset", [-1, 1], ids=["older", "newer"])
    @pytest.mark.parametrize("write", sorted(FENCED_WRITES))
    async def test_write_with_stale_fence_is_rejected_and_changes_nothing(
        self, backend: Backend, write: str, offset: int
    ) -> None:
        new, task = await start(backend)
        before_task = await stored_task(backend, task.id)
        before_ex = await stored_execution(backend, new.id)
        assert await FENCED_WRITES[write](backend, task.id, task.fence + offset) is False
        assert await stored_task(backend, task.id) == before_task
        assert await stored_execution(backend, new.id) == before_ex
        assert await backend.get_dead_letter(task.id) is None

    @pytest.mark.asyncio
    @pytest.mark.parametrize("write", sorted(FENCED_WRITES))
    async def test_write_to_task_that_is_not_running_is_rejected(
        self, backend: Backend, write: str
    ) -> None:
        _, task = await start(backend)
        assert await backend.release_task(task.id, task.fence, at(1)) is True
        before = await stored_task(backend, task.id)
        assert await FENCED_WRITES[write](backend, task.id, task.fence) is False
        assert await stored_task(backend, task.id) == before

    @pytest.mark.asyncio
    async def test_second_completion_with_same_fence_is_rejected(
        self, backend: Backend
    ) -> None:
        _, task = await start(backend)
        assert await backend.complete_task(task.id, task.fence, b"1", at(1)) is True
        assert await backend.complete_task(task.id, task.fence, b"2", at(2)) is False
        assert (await stored_task(backend, task.id)).result == b"1"

    @pytest.mark.asyncio
    async def test_old_holder_cannot_complete_after_reclaim(self, backend: Backend) -> None:
        _, old = await start(backend, worker="w-1")
        new = await claim_only(backend, old.id, worker="w-2", now=at(61), lease_until=at(120))
        assert await backend.complete_task(old.id, old.fence, b'"old"', at(62)) is False
        assert await backend.complete_task(new.id, new.fence, b'"new"', at(63)) is True
        assert (await stored_task(backend, old.id)).result == b'"new"'

    @pytest.mark.asyncio
    async def test_old_fence_is_rejected_even_when_same_worker_reclaims(
        self, backend: Backend
    ) -> None:
        _, old = await start(backend, worker="w-1")
        await claim_only(backend, old.id, worker="w-1", now=at(61), lease_until=at(120))
        assert await backend.complete_task(old.id, old.fence, b"1", at(62)) is False
        assert (await stored_task(backend, old.id)).state == "running"

    @pytest.mark.asyncio
    async def test_renew_leases_extends_held_leases(self, backend: Backend) -> None:
        _, a = await start(backend, worker="w-1")
        _, b = await start(backend, worker="w-1")
        lost = await backend.renew_leases("w-1", [(a.id, a.fence), (b.id, b.fence)], at(100))
        assert lost == set()
        for task_id in (a.id, b.id):
            self.assert_time((await stored_task(backend, task_id)).lease_expires_at, at(100))

    @pytest.mark.asyncio
    async def test_renewed_lease_keeps_task_from_other_claimers(
        self, backend: Backend
    ) -> None:
        _, task = await start(backend, worker="w-1")
        await backend.renew_leases("w-1", [(task.id, task.fence)], at(100))
        assert await backend.claim("w-2", claim_filter(), 10, at(61), at(200)) == []

    @pytest.mark.asyncio
    async def test_renew_leases_reports_stale_fence_as_lost(self, backend: Backend) -> None:
        _, old = await start(backend, worker="w-1")
        await claim_only(backend, old.id, worker="w-2", now=at(61), lease_until=at(120))
        lost = await backend.renew_leases("w-1", [(old.id, old.fence)], at(200))
        assert lost == {old.id}
        task = await stored_task(backend, old.id)
        assert task.worker_id == "w-2"
        self.assert_time(task.lease_expires_at, at(120))

    @pytest.mark.asyncio
    async def test_renew_leases_reports_task_of_another_worker_as_lost(
        self, backend: Backend
    ) -> None:
        _, task = await start(backend, worker="w-1")
        lost = await backend.renew_leases("w-2", [(task.id, task.fence)], at(200))
        assert lost == {task.id}
        self.assert_time((await stored_task(backend, task.id)).lease_expires_at, at(60))

    @pytest.mark.asyncio
    async def test_renew_leases_returns_only_the_lost_ids(self, backend: Backend) -> None:
        _, kept = await start(backend, worker="w-1")
        _, finished = await start(backend, worker="w-1")
        await backend.complete_task(finished.id, finished.fence, b"1", at(1))
        gone = new_id()
        held = [(kept.id, kept.fence), (finished.id, finished.fence), (gone, 1)]
        assert await backend.renew_leases("w-1", held, at(100)) == {finished.id, gone}
        self.assert_time((await stored_task(backend, kept.id)).lease_expires_at, at(100))

    @pytest.mark.asyncio
    async def test_renew_leases_of_nothing_returns_empty_set(self, backend: Backend) -> None:
        assert await backend.renew_leases("w-1", [], at(100)) == set()

    @pytest.mark.asyncio
    async def test_create_step_with_stale_parent_fence_raises_lease_lost(
        self, backend: Backend
    ) -> None:
        new, old = await start(backend, worker="w-1")
        await claim_only(backend, old.id, worker="w-2", now=at(61), lease_until=at(120))
        child = new_task(parent_id=old.id, parent_attempt=old.attempt, seq=0)
        with pytest.raises(LeaseLostError):
            await backend.create_step(old.id, old.fence, child, at(62))
        assert await backend.get_task(child.id) is None
        assert await backend.load_steps(old.id, old.attempt) == []
        assert len(await backend.list_tasks_for_execution(new.id)) == 1

    @pytest.mark.asyncio
    async def test_create_step_under_suspended_parent_raises_lease_lost(
        self, backend: Backend
    ) -> None:
        _, parent = await start(backend)
        child = await running_step(backend, parent, 0)
        assert await backend.suspend_task(parent.id, parent.fence, [child.id], at(1)) is True
        step = new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=1)
        with pytest.raises(LeaseLostError):
            await backend.create_step(parent.id, parent.fence, step, at(2))
        assert await backend.get_task(step.id) is None

    @pytest.mark.asyncio
    async def test_update_task_bumps_fence(self, backend: Backend) -> None:
        _, task = await start(backend)
        record = await stored_task(backend, task.id)
        await backend.update_task(record)
        assert (await stored_task(backend, task.id)).fence > task.fence

    @pytest.mark.asyncio
    async def test_update_task_fences_out_old_holder(self, backend: Backend) -> None:
        _, task = await start(backend, worker="w-1")
        record = await stored_task(backend, task.id)
        record.state = "pending"  # as the deployment guide shows: lease left as it was
        record.worker_id = None
        await backend.update_task(record)
        assert await backend.complete_task(task.id, task.fence, b"1", at(1)) is False
        assert await backend.renew_leases("w-1", [(task.id, task.fence)], at(100)) == {task.id}
        assert (await stored_task(backend, task.id)).state == "pending"

    @pytest.mark.asyncio
    async def test_update_task_to_pending_makes_task_claimable(self, backend: Backend) -> None:
        _, task = await start(backend, worker="w-1")
        record = await stored_task(backend, task.id)
        record.state = "pending"  # as the deployment guide shows: lease left as it was
        record.worker_id = None
        await backend.update_task(record)
        again = await claim_only(backend, task.id, worker="w-2", now=at(1), lease_until=at(90))
        assert again.fence > task.fence
        assert await backend.complete_task(again.id, again.fence, b"2", at(2)) is True

    @pytest.mark.asyncio
    async def test_pending_task_fence_grows_with_every_claim(self, backend: Backend) -> None:
        new = await dispatch(backend)
        fences = []
        for i in range(3):
            task = await claim_only(backend, new.root.id, now=at(i))
            fences.append(task.fence)
            assert await backend.release_task(task.id, task.fence, at(i)) is True
        assert fences == sorted(set(fences))


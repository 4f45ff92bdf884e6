"""Finishing and giving back tasks: complete, fail, retry, release, suspend, and wake-ups."""

from __future__ import annotations

import pytest
from stent.backend import Backend

from .arrange import (
    add_step,
    claim_only,
    events,
    running_step,
    start,
    stored_execution,
    stored_task,
)
from .base import ConformanceBase
from .builders import at, claim_filter, new_id


class OutcomeContract(ConformanceBase):
    """``complete_task``, ``fail_task``, ``retry_task``, ``release_task``, ``suspend_task``."""

    # -- complete ---------------------------------------------------------------------------
    @pytest.mark.asyncio
    async def test_complete_task_stores_result_and_drops_lease(self, backend: Backend) -> None:
        _, task = await start(backend)
        assert await backend.complete_task(task.id, task.fence, b'{"ok": true}', at(4)) is True
        stored = await stored_task(backend, task.id)
        assert (stored.state, stored.result) == ("completed", b'{"ok": true}')
        assert (stored.worker_id, stored.lease_expires_at) == (None, None)
        self.assert_time(stored.finished_at, at(4))

    @pytest.mark.asyncio
    async def test_completing_root_completes_execution(self, backend: Backend) -> None:
        new, root = await start(backend)
        await backend.complete_task(root.id, root.fence, b"42", at(4))
        ex = await stored_execution(backend, new.id)
        assert (ex.state, ex.result, ex.error) == ("completed", b"42", None)
        self.assert_time(ex.finished_at, at(4))
        assert events(ex)[-1] == "completed"

    @pytest.mark.asyncio
    async def test_completing_child_does_not_finish_execution(self, backend: Backend) -> None:
        new, root = await start(backend)
        child = await running_step(backend, root, 0)
        await backend.complete_task(child.id, child.fence, b"1", at(1))
        ex = await stored_execution(backend, new.id)
        assert (ex.state, ex.result, ex.finished_at) == ("running", None, None)

    @pytest.mark.asyncio
    async def test_completing_child_wakes_waiting_parent(self, backend: Backend) -> None:
        _, root = await start(backend)
        child = await running_step(backend, root, 0)
        await backend.suspend_task(root.id, root.fence, [child.id], at(1))
        assert await backend.complete_task(child.id, child.fence, b"1", at(2)) is True
        assert (await stored_task(backend, root.id)).state == "pending"

    @pytest.mark.asyncio
    async def test_completing_child_leaves_running_parent_running(
        self, backend: Backend
    ) -> None:
        _, root = await start(backend)
        child = await running_step(backend, root, 0)
        await backend.complete_task(child.id, child.fence, b"1", at(2))
        parent = await stored_task(backend, root.id)
        assert (parent.state, parent.fence, parent.worker_id) == ("running", root.fence,
                                                                  root.worker_id)

    @pytest.mark.asyncio
    async def test_get_outcomes_returns_only_finished_tasks(self, backend: Backend) -> None:
        _, root = await start(backend)
        done = await running_step(backend, root, 0)
        failed = await running_step(backend, root, 1)
        running = await running_step(backend, root, 2)
        pending = await add_step(backend, root, 3)
        await backend.complete_task(done.id, done.fence, b'"r"', at(1))
        await backend.fail_task(failed.id, failed.fence, b'"e"', at(1), None)
        ids = [done.id, failed.id, running.id, pending.id, new_id()]
        got = {o.task_id: o for o in await backend.get_outcomes(ids)}
        assert set(got) == {done.id, failed.id}
        assert (got[done.id].state, got[done.id].result) == ("completed", b'"r"')
        assert (got[failed.id].state, got[failed.id].error) == ("failed", b'"e"')

    @pytest.mark.asyncio
    async def test_get_outcomes_of_nothing_is_empty(self, backend: Backend) -> None:
        assert await backend.get_outcomes([]) == []

    # -- fail -------------------------------------------------------------------------------
    @pytest.mark.asyncio
    async def test_fail_task_stores_error_and_drops_lease(self, backend: Backend) -> None:
        _, task = await start(backend)
        assert await backend.fail_task(task.id, task.fence, b'"boom"', at(3), None) is True
        stored = await stored_task(backend, task.id)
        assert (stored.state, stored.error, stored.result) == ("failed", b'"boom"', None)
        assert (stored.worker_id, stored.lease_expires_at) == (None, None)
        self.assert_time(stored.finished_at, at(3))

    @pytest.mark.asyncio
    async def test_fail_task_without_reason_writes_no_dead_letter(
        self, backend: Backend
    ) -> None:
        _, task = await start(backend)
        await backend.fail_task(task.id, task.fence, b'"boom"', at(3), None)
        assert await backend.get_dead_letter(task.id) is None
        assert await backend.list_dead_letters() == []

    @pytest.mark.asyncio
    async def test_failing_root_fails_execution(self, backend: Backend) -> None:
        new, root = await start(backend)
        await backend.fail_task(root.id, root.fence, b'"boom"', at(3), None)
        ex = await stored_execution(backend, new.id)
        assert (ex.state, ex.error, ex.result) == ("failed", b'"boom"', None)
        self.assert_time(ex.finished_at, at(3))
        assert events(ex)[-1] == "failed"

    @pytest.mark.asyncio
    async def test_failing_child_wakes_waiting_parent(self, backend: Backend) -> None:
        new, root = await start(backend)
        child = await running_step(backend, root, 0)
        await backend.suspend_task(root.id, root.fence, [child.id], at(1))
        await backend.fail_task(child.id, child.fence, b'"boom"', at(2), "exhausted")
        assert (await stored_task(backend, root.id)).state == "pending"
        assert (await stored_execution(backend, new.id)).state == "running"

    # -- retry ------------------------------------------------------------------------------
    @pytest.mark.asyncio
    async def test_retry_task_schedules_next_attempt(self, backend: Backend) -> None:
        _, task = await start(backend)
        assert await backend.retry_task(task.id, task.fence, b'"flaky"', at(30), at(5)) is True
        stored = await stored_task(backend, task.id)
        assert stored.state == "pending"
        assert (stored.attempt, stored.retries) == (task.attempt + 1, task.retries + 1)
        assert stored.error == b'"flaky"'
        assert (stored.worker_id, stored.lease_expires_at) == (None, None)
        self.assert_time(stored.due_at, at(30))

    @pytest.mark.asyncio
    async def test_retried_task_is_not_claimable_before_due_time(
        self, backend: Backend
    ) -> None:
        _, task = await start(backend)
        await backend.retry_task(task.id, task.fence, b'"flaky"', at(30), at(5))
        assert await backend.claim("w", claim_filter(), 10, at(29.999), at(90)) == []

    @pytest.mark.asyncio
    async def test_retried_task_is_claimable_from_due_time(self, backend: Backend) -> None:
        _, task = await start(backend)
        await backend.retry_task(task.id, task.fence, b'"flaky"', at(30), at(5))
        again = await claim_only(backend, task.id, now=at(30), lease_until=at(90))
        assert again.attempt == task.attempt + 1
        assert again.fence > task.fence
        assert again.crash_count == task.crash_count

    @pytest.mark.asyncio
    async def test_progress_log_is_bounded_and_keeps_the_newest_entries(
        self, backend: Backend
    ) -> None:
        new, task = await start(backend)
        for i in range(150):
            assert await backend.retry_task(task.id, task.fence, b'"flaky"', at(i + 1), at(i))
            task = await claim_only(backend, task.id, now=at(i + 1), lease_until=at(i + 90))
        ex = await stored_execution(backend, new.id)
        assert 10 <= len(ex.progress) <= 200  # bounded (Stent's backends keep 100)
        assert ex.progress[-1]["event"] in ("retrying", "running")
        assert "dispatched" not in events(ex)  # the oldest entries were dropped

    @pytest.mark.asyncio
    async def test_retry_records_retrying_progress(self, backend: Backend) -> None:
        new, task = await start(backend)
        await backend.retry_task(task.id, task.fence, b'"flaky"', at(30), at(5))
        ex = await stored_execution(backend, new.id)
        assert "retrying" in events(ex)
        assert ex.finished_at is None

    @pytest.mark.asyncio
    async def test_retries_accumulate_over_attempts(self, backend: Backend) -> None:
        _, task = await start(backend)
        for i in range(1, 4):
            await backend.retry_task(task.id, task.fence, b"e", at(10 * i), at(10 * i - 5))
            task = await claim_only(backend, task.id, now=at(10 * i), lease_until=at(100))
        stored = await stored_task(backend, task.id)
        assert (stored.attempt, stored.retries) == (4, 3)

    # -- release ----------------------------------------------------------------------------
    @pytest.mark.asyncio
    async def test_release_task_returns_it_to_pending_at_same_attempt(
        self, backend: Backend
    ) -> None:
        _, task = await start(backend)
        assert await backend.release_task(task.id, task.fence, at(2)) is True
        stored = await stored_task(backend, task.id)
        assert (stored.state, stored.attempt, stored.retries) == ("pending", task.attempt,
                                                                  task.retries)
        assert (stored.worker_id, stored.lease_expires_at) == (None, None)

    @pytest.mark.asyncio
    async def test_released_task_is_claimable_at_once(self, backend: Backend) -> None:
        _, task = await start(backend, worker="w-1")
        await backend.release_task(task.id, task.fence, at(2))
        again = await claim_only(backend, task.id, worker="w-2", now=at(2), lease_until=at(90))
        assert (again.attempt, again.worker_id) == (task.attempt, "w-2")
        assert again.crash_count == task.crash_count

    # -- suspend ----------------------------------------------------------------------------
    @pytest.mark.asyncio
    async def test_suspend_with_unfinished_children_makes_task_waiting(
        self, backend: Backend
    ) -> None:
        _, root = await start(backend)
        a = await running_step(backend, root, 0)
        b = await add_step(backend, root, 1)
        assert await backend.suspend_task(root.id, root.fence, [a.id, b.id], at(1)) is True
        stored = await stored_task(backend, root.id)
        assert stored.state == "waiting"
        assert (stored.worker_id, stored.lease_expires_at) == (None, None)

    @pytest.mark.asyncio
    async def test_suspend_when_an_awaited_child_already_finished_makes_task_pending(
        self, backend: Backend
    ) -> None:
        _, root = await start(backend)
        waiting_on = await running_step(backend, root, 0)
        finished = await running_step(backend, root, 1)
        await backend.complete_task(finished.id, finished.fence, b"1", at(1))
        assert await backend.suspend_task(
            root.id, root.fence, [waiting_on.id, finished.id], at(2)
        ) is True
        stored = await stored_task(backend, root.id)
        assert stored.state == "pending"
        assert stored.worker_id is None

    @pytest.mark.asyncio
    async def test_suspend_when_an_awaited_child_already_failed_makes_task_pending(
        self, backend: Backend
    ) -> None:
        _, root = await start(backend)
        failed = await running_step(backend, root, 0)
        await backend.fail_task(failed.id, failed.fence, b"e", at(1), None)
        await backend.suspend_task(root.id, root.fence, [failed.id], at(2))
        assert (await stored_task(backend, root.id)).state == "pending"

    @pytest.mark.asyncio
    async def test_waiting_task_is_not_claimable(self, backend: Backend) -> None:
        _, root = await start(backend)
        timer = await add_step(backend, root, 0, kind="sleep", name="stent.sleep",
                               due_at=at(10_000))
        await backend.suspend_task(root.id, root.fence, [timer.id], at(1))
        assert await backend.claim("w-2", claim_filter(), 10, at(100), at(200)) == []

    @pytest.mark.asyncio
    async def test_child_completion_makes_waiting_task_claimable(
        self, backend: Backend
    ) -> None:
        _, root = await start(backend)
        child = await running_step(backend, root, 0)
        await backend.suspend_task(root.id, root.fence, [child.id], at(1))
        await backend.complete_task(child.id, child.fence, b"1", at(2))
        again = await claim_only(backend, root.id, worker="w-2", now=at(3), lease_until=at(90))
        assert again.attempt == root.attempt
        assert again.fence > root.fence

    @pytest.mark.asyncio
    async def test_suspended_task_keeps_its_execution_running(self, backend: Backend) -> None:
        new, root = await start(backend)
        child = await running_step(backend, root, 0)
        await backend.suspend_task(root.id, root.fence, [child.id], at(1))
        assert (await stored_execution(backend, new.id)).state == "running"

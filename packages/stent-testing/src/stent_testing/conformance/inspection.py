"""Inspection and operator calls, and records that are detached from the store."""

from __future__ import annotations

import pytest
from stent.backend import Backend

from .arrange import (
    LEASE_UNTIL,
    add_step,
    dispatch,
    events,
    running_step,
    start,
    stored_execution,
    stored_task,
)
from .base import ConformanceBase
from .builders import at, claim_filter, new_id


class InspectionContract(ConformanceBase):
    """``get_task``, ``update_task``, ``list_*``, ``count_*``, ``queue_depth``."""

    @pytest.mark.asyncio
    async def test_get_task_returns_documented_fields(self, backend: Backend) -> None:
        new, claimed = await start(backend, worker="w-9")
        task = await stored_task(backend, claimed.id)
        assert (task.id, task.execution_id) == (new.root.id, new.id)
        assert (task.step_name, task.kind, task.state) == ("app:work", "function", "running")
        assert (task.worker_id, task.retries, task.fence) == ("w-9", 0, claimed.fence)
        self.assert_time(task.lease_expires_at, LEASE_UNTIL)

    @pytest.mark.asyncio
    async def test_get_task_of_unknown_id_returns_none(self, backend: Backend) -> None:
        await dispatch(backend)
        assert await backend.get_task(new_id()) is None

    @pytest.mark.asyncio
    async def test_update_task_persists_operator_fields(self, backend: Backend) -> None:
        _, claimed = await start(backend)
        task = await stored_task(backend, claimed.id)
        task.state = "pending"
        task.worker_id = "w-ops"
        task.lease_expires_at = at(500)
        task.due_at = at(300)
        task.priority = 9
        task.queue = "ops"
        task.tags = ("manual",)
        task.retries = 4
        await backend.update_task(task)
        stored = await stored_task(backend, claimed.id)
        assert (stored.state, stored.worker_id, stored.priority) == ("pending", "w-ops", 9)
        assert (stored.queue, tuple(stored.tags), stored.retries) == ("ops", ("manual",), 4)
        self.assert_time(stored.lease_expires_at, at(500))
        self.assert_time(stored.due_at, at(300))

    @pytest.mark.asyncio
    async def test_update_task_can_clear_worker_and_lease(self, backend: Backend) -> None:
        _, claimed = await start(backend)
        task = await stored_task(backend, claimed.id)
        task.state, task.worker_id, task.lease_expires_at = "pending", None, None
        await backend.update_task(task)
        stored = await stored_task(backend, claimed.id)
        assert (stored.state, stored.worker_id, stored.lease_expires_at) == ("pending", None,
                                                                             None)

    @pytest.mark.asyncio
    async def test_update_task_to_later_due_time_delays_claim(self, backend: Backend) -> None:
        new = await dispatch(backend)
        task = await stored_task(backend, new.root.id)
        task.due_at = at(300)
        await backend.update_task(task)
        assert await backend.claim("w", claim_filter(), 10, at(299), at(400)) == []
        assert len(await backend.claim("w", claim_filter(), 10, at(300), at(400))) == 1

    @pytest.mark.asyncio
    async def test_list_tasks_for_execution_is_oldest_first(self, backend: Backend) -> None:
        new, root = await start(backend)
        late_seq = await running_step(backend, root, 5, now=at(1))
        early_seq = await add_step(backend, root, 0, now=at(2))
        grandchild = await add_step(backend, late_seq, 0, now=at(3))
        tasks = await backend.list_tasks_for_execution(new.id)
        assert [t.id for t in tasks] == [root.id, late_seq.id, early_seq.id, grandchild.id]

    @pytest.mark.asyncio
    async def test_list_tasks_for_execution_only_lists_that_execution(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        await dispatch(backend)
        tasks = await backend.list_tasks_for_execution(new.id)
        assert [t.id for t in tasks] == [root.id]

    @pytest.mark.asyncio
    async def test_list_tasks_for_unknown_execution_is_empty(self, backend: Backend) -> None:
        await dispatch(backend)
        assert await backend.list_tasks_for_execution(new_id()) == []

    @pytest.mark.asyncio
    async def test_count_tasks_by_queue_and_state(self, backend: Backend) -> None:
        await dispatch(backend, queue="a")
        await dispatch(backend, queue="a")
        await dispatch(backend, queue="b")
        await dispatch(backend)
        await backend.claim("w", claim_filter(queues=["b"]), 10, at(0), LEASE_UNTIL)
        assert await backend.count_tasks() == 4
        assert await backend.count_tasks(queue="a") == 2
        assert await backend.count_tasks(state="pending") == 3
        assert await backend.count_tasks(state="running") == 1
        assert await backend.count_tasks(queue="b", state="running") == 1
        assert await backend.count_tasks(queue="b", state="pending") == 0
        assert await backend.count_tasks(queue="nowhere") == 0

    @pytest.mark.asyncio
    async def test_count_executions_by_state(self, backend: Backend) -> None:
        await dispatch(backend, due_at=at(1000))
        await start(backend)
        _, done = await start(backend)
        await backend.complete_task(done.id, done.fence, b"1", at(1))
        assert await backend.count_executions() == 3
        assert await backend.count_executions(state="pending") == 1
        assert await backend.count_executions(state="running") == 1
        assert await backend.count_executions(state="completed") == 1
        assert await backend.count_executions(state="failed") == 0

    @pytest.mark.asyncio
    async def test_queue_depth_counts_pending_tasks_in_that_queue(
        self, backend: Backend
    ) -> None:
        for _ in range(3):
            await dispatch(backend, queue="q")
        await dispatch(backend, queue="other")
        await backend.claim("w", claim_filter(queues=["q"]), 1, at(0), LEASE_UNTIL)
        assert await backend.queue_depth("q") == 2
        assert await backend.queue_depth("other") == 1
        assert await backend.queue_depth("empty") == 0

    @pytest.mark.asyncio
    async def test_queue_depth_of_none_is_the_default_queue(self, backend: Backend) -> None:
        await dispatch(backend)
        await dispatch(backend)
        await dispatch(backend, queue="q")
        assert await backend.queue_depth() == 2
        assert await backend.queue_depth(None) == 2

    @pytest.mark.asyncio
    async def test_list_executions_is_newest_first(self, backend: Backend) -> None:
        ids = {t: (await dispatch(backend, now=at(t))).id for t in (1, 3, 2)}
        got = await backend.list_executions()
        assert [e.id for e in got] == [ids[3], ids[2], ids[1]]

    @pytest.mark.asyncio
    async def test_list_executions_pages_with_limit_and_offset(
        self, backend: Backend
    ) -> None:
        ids = [(await dispatch(backend, now=at(t))).id for t in range(5)]
        newest_first = ids[::-1]
        assert [e.id for e in await backend.list_executions(limit=2)] == newest_first[:2]
        page = await backend.list_executions(limit=2, offset=2)
        assert [e.id for e in page] == newest_first[2:4]
        assert [e.id for e in await backend.list_executions(limit=10, offset=4)] == ids[:1]

    @pytest.mark.asyncio
    async def test_list_executions_defaults_to_ten(self, backend: Backend) -> None:
        for t in range(12):
            await dispatch(backend, now=at(t))
        assert len(await backend.list_executions()) == 10

    @pytest.mark.asyncio
    async def test_list_executions_filters_by_state(self, backend: Backend) -> None:
        pending = await dispatch(backend, now=at(0), due_at=at(1000))
        running, _ = await start(backend, now=at(1))
        assert [e.id for e in await backend.list_executions(state="pending")] == [pending.id]
        assert [e.id for e in await backend.list_executions(state="running")] == [running.id]
        assert await backend.list_executions(state="failed") == []


class DetachmentContract(ConformanceBase):
    """Records handed out are copies: changing one without ``update_task`` changes nothing."""

    @pytest.mark.asyncio
    async def test_mutating_returned_task_changes_nothing_stored(
        self, backend: Backend
    ) -> None:
        new = await dispatch(backend, tags=("a",))
        task = await stored_task(backend, new.root.id)
        before = await stored_task(backend, new.root.id)
        task.state = "completed"
        task.worker_id = "intruder"
        task.priority = 99
        task.tags = ("b",)
        task.due_at = at(999)
        task.fence += 10
        assert await stored_task(backend, new.root.id) == before

    @pytest.mark.asyncio
    async def test_mutating_returned_retry_policy_changes_nothing_stored(
        self, backend: Backend
    ) -> None:
        new = await dispatch(backend, retry_policy={"max_attempts": 3})
        task = await stored_task(backend, new.root.id)
        task.retry_policy["max_attempts"] = 99
        assert (await stored_task(backend, new.root.id)).retry_policy == {"max_attempts": 3}

    @pytest.mark.asyncio
    async def test_mutating_claimed_task_changes_nothing_stored(self, backend: Backend) -> None:
        _, claimed = await start(backend)
        before = await stored_task(backend, claimed.id)
        claimed.state = "pending"
        claimed.worker_id = None
        assert await stored_task(backend, claimed.id) == before

    @pytest.mark.asyncio
    async def test_mutating_returned_execution_changes_nothing_stored(
        self, backend: Backend
    ) -> None:
        new = await dispatch(backend)
        ex = await stored_execution(backend, new.id)
        ex.state = "completed"
        ex.result = b"forged"
        ex.progress.append({"event": "forged"})
        ex.counters["x"] = 1
        stored = await stored_execution(backend, new.id)
        assert (stored.state, stored.result, events(stored)) == ("pending", None, ["dispatched"])
        assert stored.counters == {}

    @pytest.mark.asyncio
    async def test_mutating_returned_progress_entry_changes_nothing_stored(
        self, backend: Backend
    ) -> None:
        new = await dispatch(backend)
        ex = await stored_execution(backend, new.id)
        ex.progress[0]["event"] = "forged"
        assert events(await stored_execution(backend, new.id)) == ["dispatched"]

    @pytest.mark.asyncio
    async def test_mutating_returned_dead_letter_changes_nothing_stored(
        self, backend: Backend
    ) -> None:
        _, task = await start(backend)
        await backend.fail_task(task.id, task.fence, b"e", at(1), "poison")
        dl = await backend.get_dead_letter(task.id)
        assert dl is not None
        dl.reason = "forged"
        dl.retries = 99
        (listed,) = await backend.list_dead_letters()
        listed.error = b"forged"
        stored = await backend.get_dead_letter(task.id)
        assert stored is not None
        assert (stored.reason, stored.retries, stored.error) == ("poison", 0, b"e")

"""Dead letters: written by a failure with a reason, listed, replayed, discarded."""

from __future__ import annotations

import pytest
from stent.backend import Backend
from stent.records import NewExecution, TaskRecord

from .arrange import claim_only, running_step, start, stored_execution, stored_task
from .base import ConformanceBase
from .builders import at, new_id

REPLAY_AT = at(100)


async def dead_child(
    backend: Backend, *, retries: int = 1, queue: str | None = "jobs"
) -> tuple[NewExecution, TaskRecord, TaskRecord]:
    """A root that failed because its child was dead-lettered after ``retries`` retries.

    The root waits on the child; the child is retried ``retries`` times, then fails at
    ``at(10)`` with reason ``exhausted``; the woken root is claimed and fails at ``at(12)``, so
    the execution is failed.

    Returns:
        The execution, the root's last claim, and the child's last claim.
    """
    new, root = await start(backend)
    child = await running_step(backend, root, 0, name="app:other", queue=queue)
    await backend.suspend_task(root.id, root.fence, [child.id], at(0.5))
    for i in range(retries):
        await backend.retry_task(child.id, child.fence, b'"flaky"', at(1 + i), at(1 + i))
        child = await claim_only(backend, child.id, now=at(1 + i))
    assert await backend.fail_task(child.id, child.fence, b'"gave up"', at(10), "exhausted")
    root = await claim_only(backend, root.id, now=at(11))
    assert await backend.fail_task(root.id, root.fence, b'"child failed"', at(12), None)
    return new, root, child


async def replay(
    backend: Backend, task_id: str, *, queue: str | None = None, reset_retries: bool = True,
    set_queue: bool = False,
) -> bool:
    """``replay_dead_letter`` at :data:`REPLAY_AT`, with the engine's defaults."""
    return await backend.replay_dead_letter(
        task_id, queue=queue, reset_retries=reset_retries, now=REPLAY_AT, set_queue=set_queue
    )


class DeadLetterContract(ConformanceBase):
    """``fail_task`` with a reason, and the dead-letter operations."""

    @pytest.mark.asyncio
    async def test_fail_with_reason_writes_dead_letter(self, backend: Backend) -> None:
        new, _, child = await dead_child(backend, retries=2)
        dl = await backend.get_dead_letter(child.id)
        assert dl is not None
        assert (dl.task_id, dl.execution_id) == (child.id, new.id)
        assert (dl.step_name, dl.queue, dl.reason) == ("app:other", "jobs", "exhausted")
        assert (dl.error, dl.retries) == (b'"gave up"', 2)
        self.assert_time(dl.created_at, at(10))

    @pytest.mark.asyncio
    async def test_dead_lettered_task_is_failed(self, backend: Backend) -> None:
        _, _, child = await dead_child(backend)
        stored = await stored_task(backend, child.id)
        assert (stored.state, stored.error) == ("failed", b'"gave up"')

    @pytest.mark.asyncio
    async def test_get_dead_letter_of_unknown_task_returns_none(self, backend: Backend) -> None:
        await dead_child(backend)
        assert await backend.get_dead_letter(new_id()) is None

    @pytest.mark.asyncio
    async def test_list_dead_letters_is_newest_first_and_limited(
        self, backend: Backend
    ) -> None:
        ids = {}
        for t in (1, 3, 2):
            _, task = await start(backend, now=at(0))
            await backend.fail_task(task.id, task.fence, b"e", at(t), "poison")
            ids[t] = task.id
        assert [d.task_id for d in await backend.list_dead_letters()] == [ids[3], ids[2], ids[1]]
        assert [d.task_id for d in await backend.list_dead_letters(limit=2)] == [ids[3], ids[2]]

    @pytest.mark.asyncio
    async def test_replay_makes_task_pending_at_next_attempt(self, backend: Backend) -> None:
        _, _, child = await dead_child(backend)
        assert await replay(backend, child.id) is True
        stored = await stored_task(backend, child.id)
        assert (stored.state, stored.attempt) == ("pending", child.attempt + 1)
        assert (stored.worker_id, stored.lease_expires_at) == (None, None)
        self.assert_time(stored.due_at, REPLAY_AT)

    @pytest.mark.asyncio
    async def test_replayed_task_is_claimable_at_once(self, backend: Backend) -> None:
        _, _, child = await dead_child(backend)
        await replay(backend, child.id)
        again = await claim_only(backend, child.id, now=REPLAY_AT, lease_until=at(200))
        assert again.attempt == child.attempt + 1
        assert again.fence > child.fence

    @pytest.mark.asyncio
    async def test_replay_resets_retries_when_asked(self, backend: Backend) -> None:
        _, _, child = await dead_child(backend, retries=2)
        await replay(backend, child.id, reset_retries=True)
        assert (await stored_task(backend, child.id)).retries == 0

    @pytest.mark.asyncio
    async def test_replay_keeps_retries_when_not_reset(self, backend: Backend) -> None:
        _, _, child = await dead_child(backend, retries=2)
        await replay(backend, child.id, reset_retries=False)
        assert (await stored_task(backend, child.id)).retries == 2

    @pytest.mark.asyncio
    async def test_replay_keeps_queue_unless_set_queue(self, backend: Backend) -> None:
        _, _, child = await dead_child(backend, queue="jobs")
        await replay(backend, child.id, queue="rescue", set_queue=False)
        assert (await stored_task(backend, child.id)).queue == "jobs"

    @pytest.mark.asyncio
    async def test_replay_with_set_queue_moves_task_to_that_queue(
        self, backend: Backend
    ) -> None:
        _, _, child = await dead_child(backend, queue="jobs")
        await replay(backend, child.id, queue="rescue", set_queue=True)
        assert (await stored_task(backend, child.id)).queue == "rescue"
        assert await backend.queue_depth("rescue") == 1

    @pytest.mark.asyncio
    async def test_replay_with_set_queue_none_moves_task_to_default_queue(
        self, backend: Backend
    ) -> None:
        _, _, child = await dead_child(backend, queue="jobs")
        await replay(backend, child.id, queue=None, set_queue=True)
        assert (await stored_task(backend, child.id)).queue is None

    @pytest.mark.asyncio
    async def test_replay_removes_dead_letter(self, backend: Backend) -> None:
        _, _, child = await dead_child(backend)
        await replay(backend, child.id)
        assert await backend.get_dead_letter(child.id) is None
        assert await backend.list_dead_letters() == []
        assert await replay(backend, child.id) is False

    @pytest.mark.asyncio
    async def test_replay_resumes_failed_parent_as_waiting_at_same_attempt(
        self, backend: Backend
    ) -> None:
        _, root, child = await dead_child(backend)
        await replay(backend, child.id)
        parent = await stored_task(backend, root.id)
        assert (parent.state, parent.attempt) == ("waiting", root.attempt)

    @pytest.mark.asyncio
    async def test_replay_moves_failed_execution_back_to_running(
        self, backend: Backend
    ) -> None:
        new, _, child = await dead_child(backend)
        assert (await stored_execution(backend, new.id)).state == "failed"
        await replay(backend, child.id)
        assert (await stored_execution(backend, new.id)).state == "running"

    @pytest.mark.asyncio
    async def test_completing_replayed_task_wakes_its_parent(self, backend: Backend) -> None:
        _, root, child = await dead_child(backend)
        await replay(backend, child.id)
        again = await claim_only(backend, child.id, now=REPLAY_AT, lease_until=at(200))
        assert await backend.complete_task(again.id, again.fence, b'"ok"', at(101)) is True
        assert (await stored_task(backend, root.id)).state == "pending"
        resumed = await claim_only(backend, root.id, now=at(102), lease_until=at(200))
        assert resumed.attempt == root.attempt
        (step,) = await backend.load_steps(root.id, root.attempt)
        assert (step.task_id, step.state, step.result) == (child.id, "completed", b'"ok"')

    @pytest.mark.asyncio
    async def test_replay_of_dead_lettered_root_resumes_execution(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        await backend.fail_task(root.id, root.fence, b'"poison"', at(5), "poison")
        assert await replay(backend, root.id) is True
        assert (await stored_task(backend, root.id)).state == "pending"
        assert (await stored_execution(backend, new.id)).state == "running"

    @pytest.mark.asyncio
    async def test_replay_of_unknown_dead_letter_returns_false(self, backend: Backend) -> None:
        assert await replay(backend, new_id()) is False

    @pytest.mark.asyncio
    async def test_replay_of_failure_without_dead_letter_returns_false(
        self, backend: Backend
    ) -> None:
        _, task = await start(backend)
        await backend.fail_task(task.id, task.fence, b"e", at(1), None)
        assert await replay(backend, task.id) is False
        assert (await stored_task(backend, task.id)).state == "failed"

    @pytest.mark.asyncio
    async def test_discard_dead_letter_returns_true_then_false(self, backend: Backend) -> None:
        _, _, child = await dead_child(backend)
        assert await backend.discard_dead_letter(child.id) is True
        assert await backend.get_dead_letter(child.id) is None
        assert await backend.discard_dead_letter(child.id) is False
        assert (await stored_task(backend, child.id)).state == "failed"

    @pytest.mark.asyncio
    async def test_replay_of_discarded_dead_letter_returns_false(
        self, backend: Backend
    ) -> None:
        _, _, child = await dead_child(backend)
        await backend.discard_dead_letter(child.id)
        assert await replay(backend, child.id) is False

"""Retention: ``cleanup_executions`` and ``cleanup_dead_letters``."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from stent.backend import Backend
from stent.records import NewExecution

from .arrange import dispatch, running_step, start, stored_execution, stored_task
from .base import ConformanceBase, naive_local
from .builders import at
from .deadletters import dead_child

MICROSECOND = timedelta(microseconds=1)


async def finished(
    backend: Backend, finished_at: datetime, *, failed: bool = False
) -> tuple[NewExecution, list[str]]:
    """An execution with one completed step whose root completed (or failed) at
    ``finished_at``.

    Returns:
        The execution and the ids of its tasks.
    """
    new, root = await start(backend, now=finished_at - timedelta(seconds=5))
    child = await running_step(backend, root, 0, now=finished_at - timedelta(seconds=4))
    await backend.complete_task(child.id, child.fence, b"1", finished_at - timedelta(seconds=3))
    if failed:
        await backend.fail_task(root.id, root.fence, b'"e"', finished_at, None)
    else:
        await backend.complete_task(root.id, root.fence, b"2", finished_at)
    return new, [root.id, child.id]


class CleanupContract(ConformanceBase):
    """Deleting old terminal executions (with every row of theirs) and old dead letters."""

    @pytest.mark.asyncio
    async def test_cleanup_deletes_executions_finished_before_cutoff(
        self, backend: Backend
    ) -> None:
        old, old_tasks = await finished(backend, at(10))
        await finished(backend, at(30))
        assert await backend.cleanup_executions(at(20)) == 1
        assert await backend.get_execution(old.id) is None
        assert await backend.list_tasks_for_execution(old.id) == []
        for task_id in old_tasks:
            assert await backend.get_task(task_id) is None

    @pytest.mark.asyncio
    async def test_cleanup_keeps_executions_finished_after_cutoff(
        self, backend: Backend
    ) -> None:
        await finished(backend, at(10))
        recent, recent_tasks = await finished(backend, at(30))
        await backend.cleanup_executions(at(20))
        assert (await stored_execution(backend, recent.id)).state == "completed"
        tasks = await backend.list_tasks_for_execution(recent.id)
        assert [t.id for t in tasks] == recent_tasks
        assert await backend.count_executions() == 1

    @pytest.mark.asyncio
    async def test_cleanup_keeps_execution_finished_exactly_at_cutoff(
        self, backend: Backend
    ) -> None:
        new, _ = await finished(backend, at(10))
        assert await backend.cleanup_executions(at(10)) == 0
        assert await backend.get_execution(new.id) is not None
        assert await backend.cleanup_executions(at(10) + MICROSECOND) == 1

    @pytest.mark.asyncio
    async def test_cleanup_deletes_failed_executions(self, backend: Backend) -> None:
        new, _ = await finished(backend, at(10), failed=True)
        assert await backend.cleanup_executions(at(20)) == 1
        assert await backend.get_execution(new.id) is None

    @pytest.mark.asyncio
    async def test_cleanup_keeps_unfinished_executions(self, backend: Backend) -> None:
        pending = await dispatch(backend, now=at(-10_000), due_at=at(10_000))
        running, root = await start(backend, now=at(-10_000), due_at=at(-10_000))
        child = await running_step(backend, root, 0, now=at(-9_999))
        await backend.fail_task(child.id, child.fence, b'"e"', at(-9_998), "exhausted")
        assert await backend.cleanup_executions(at(1_000_000)) == 0
        assert (await stored_execution(backend, pending.id)).state == "pending"
        assert (await stored_execution(backend, running.id)).state == "running"
        assert (await stored_task(backend, child.id)).state == "failed"
        assert await backend.get_dead_letter(child.id) is not None

    @pytest.mark.asyncio
    async def test_cleanup_deletes_dead_letters_of_deleted_executions(
        self, backend: Backend
    ) -> None:
        new, _, child = await dead_child(backend)  # execution failed at at(12)
        assert await backend.cleanup_executions(at(20)) == 1
        assert await backend.get_execution(new.id) is None
        assert await backend.get_dead_letter(child.id) is None
        assert await backend.list_dead_letters() == []

    @pytest.mark.asyncio
    async def test_cleanup_returns_zero_when_nothing_is_old_enough(
        self, backend: Backend
    ) -> None:
        await finished(backend, at(10))
        assert await backend.cleanup_executions(at(0)) == 0
        assert await backend.count_executions() == 1

    @pytest.mark.asyncio
    async def test_cleanup_with_naive_cutoff_reads_it_as_local_time(
        self, backend: Backend, local_zone: timedelta
    ) -> None:
        old, _ = await finished(backend, at(10))
        recent, _ = await finished(backend, at(30))
        assert await backend.cleanup_executions(naive_local(at(10))) == 0
        assert await backend.cleanup_executions(naive_local(at(10) + MICROSECOND)) == 1
        assert await backend.get_execution(old.id) is None
        assert await backend.get_execution(recent.id) is not None

    @pytest.mark.asyncio
    async def test_cleanup_dead_letters_deletes_entries_written_before_cutoff(
        self, backend: Backend
    ) -> None:
        ids = {}
        for t in (1, 2, 3):
            _, task = await start(backend, now=at(0))
            await backend.fail_task(task.id, task.fence, b"e", at(t), "poison")
            ids[t] = task.id
        assert await backend.cleanup_dead_letters(at(2)) == 1
        assert await backend.get_dead_letter(ids[1]) is None
        assert {d.task_id for d in await backend.list_dead_letters()} == {ids[2], ids[3]}

    @pytest.mark.asyncio
    async def test_cleanup_dead_letters_leaves_tasks_and_executions(
        self, backend: Backend
    ) -> None:
        new, _, child = await dead_child(backend)
        assert await backend.cleanup_dead_letters(at(1000)) == 1
        assert (await stored_task(backend, child.id)).state == "failed"
        assert (await stored_execution(backend, new.id)).state == "failed"

    @pytest.mark.asyncio
    async def test_cleanup_dead_letters_with_naive_cutoff_reads_it_as_local_time(
        self, backend: Backend, local_zone: timedelta
    ) -> None:
        _, _, child = await dead_child(backend)  # dead letter written at at(10)
        assert await backend.cleanup_dead_letters(naive_local(at(10))) == 0
        assert await backend.cleanup_dead_letters(naive_local(at(10) + MICROSECOND)) == 1
        assert await backend.get_dead_letter(child.id) is None

"""Fan-out: ``create_steps`` inserts many children of one parent in one transaction."""

from __future__ import annotations

from typing import Any

import pytest
from stent.backend import Backend
from stent.errors import LeaseLostError
from stent.records import NewTask, TaskRecord

from .arrange import add_step, start, stored_task
from .base import ConformanceBase
from .builders import OTHER, at, new_task


def children(parent: TaskRecord, seqs: list[int], **fields: Any) -> list[NewTask]:
    """New children of ``parent`` at the sequence numbers ``seqs``, in that order."""
    return [
        new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=seq,
                 args=f"[{seq}]".encode(), **fields)
        for seq in seqs
    ]


class StepBatchContract(ConformanceBase):
    """A batch of step inserts: one fence check, insert-if-absent per key, input order kept."""

    @pytest.mark.asyncio
    async def test_create_steps_inserts_every_child_in_input_order(
        self, backend: Backend
    ) -> None:
        new, parent = await start(backend)
        news = children(parent, [2, 0, 1], queue="io", priority=3)
        got = await backend.create_steps(parent.id, parent.fence, news, at(1))
        assert [(row.id, created) for row, created in got] == [(n.id, True) for n in news]
        assert [row.seq for row, _ in got] == [2, 0, 1]
        for n in news:
            stored = await stored_task(backend, n.id)
            assert (stored.execution_id, stored.parent_id, stored.state) == (
                new.id, parent.id, "pending")
            assert (stored.args, stored.queue, stored.priority) == (n.args, "io", 3)
            self.assert_time(stored.created_at, at(1))
        steps = await backend.load_steps(parent.id, parent.attempt)
        assert [s.seq for s in steps] == [0, 1, 2]

    @pytest.mark.asyncio
    async def test_create_steps_returns_existing_rows_at_taken_keys(
        self, backend: Backend
    ) -> None:
        _, parent = await start(backend)
        taken = await add_step(backend, parent, 1, name=OTHER)
        news = children(parent, [0, 1, 2])
        got = await backend.create_steps(parent.id, parent.fence, news, at(1))
        assert [created for _, created in got] == [True, False, True]
        assert [row.id for row, _ in got] == [news[0].id, taken.id, news[2].id]
        assert got[1][0].step_name == OTHER
        assert await backend.get_task(news[1].id) is None
        assert len(await backend.load_steps(parent.id, parent.attempt)) == 3

    @pytest.mark.asyncio
    async def test_create_steps_keeps_born_finished_children(self, backend: Backend) -> None:
        _, parent = await start(backend)
        value = new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=0,
                         name="stent.now", kind="value", state="completed", result=b"7")
        call = new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=1)
        got = await backend.create_steps(parent.id, parent.fence, [value, call], at(1))
        assert [(row.state, row.result) for row, _ in got] == [
            ("completed", b"7"), ("pending", None),
        ]

    @pytest.mark.asyncio
    async def test_create_steps_with_a_stale_fence_raises_and_writes_nothing(
        self, backend: Backend
    ) -> None:
        _, parent = await start(backend)
        news = children(parent, [0, 1, 2])
        with pytest.raises(LeaseLostError):
            await backend.create_steps(parent.id, parent.fence + 1, news, at(1))
        for n in news:
            assert await backend.get_task(n.id) is None
        assert await backend.load_steps(parent.id, parent.attempt) == []

    @pytest.mark.asyncio
    async def test_no_batch_starts_under_a_cancelling_execution(
        self, backend: Backend
    ) -> None:
        new, parent = await start(backend)
        await backend.cancel_execution(new.id, b"cancelled", at(1))
        news = children(parent, [0, 1])
        with pytest.raises(LeaseLostError):
            await backend.create_steps(parent.id, parent.fence, news, at(2))
        for n in news:
            assert await backend.get_task(n.id) is None

    @pytest.mark.asyncio
    async def test_create_steps_of_an_empty_batch_returns_nothing(
        self, backend: Backend
    ) -> None:
        new, parent = await start(backend)
        assert await backend.create_steps(parent.id, parent.fence, [], at(1)) == []
        assert [t.id for t in await backend.list_tasks_for_execution(new.id)] == [parent.id]

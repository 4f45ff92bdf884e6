"""A finished execution leaves no task unfinished: what ``complete_task`` and ``fail_task`` of a
root task do to the other tasks of its execution, and how ``replay_dead_letter`` puts back
what a failure cancelled."""

from __future__ import annotations

from datetime import datetime

import pytest
from stent.backend import Backend
from stent.errors import LeaseLostError
from stent.records import TaskKind, TaskRecord

from .arrange import (
    add_step,
    claim_only,
    running_step,
    start,
    stored_execution,
    stored_task,
    wait_signal,
)
from .base import ConformanceBase
from .builders import OTHER, at, claim_filter, new_task

FINISHED_AT = at(5)
REPLAY_AT = at(100)
CAPPED = "app:capped"


async def _sleep(backend: Backend, parent: TaskRecord, seq: int, until: datetime) -> TaskRecord:
    """A durable sleep under ``parent``: a ``sleep`` task pending until ``until``."""
    return await add_step(backend, parent, seq, name="stent.sleep", kind=TaskKind.SLEEP,
                          due_at=until)


class FinishedExecutionContract(ConformanceBase):
    """``complete_task``/``fail_task`` of a root task cancel every other unfinished task of
    its execution in the same transaction; ``replay_dead_letter`` puts them back."""

    async def _unfinished_family(self, backend: Backend) -> tuple[TaskRecord, dict[str, str]]:
        """A running root with a task in every unfinished state beside a finished one.

        Returns:
            The root's claim, and the ids of its tasks by role.
        """
        _, root = await start(backend)
        done = await running_step(backend, root, 0)
        assert await backend.complete_task(done.id, done.fence, b'"done"', at(1))
        pending = await add_step(backend, root, 1, due_at=at(1000))
        nap = await _sleep(backend, root, 2, at(3600))
        held = await running_step(backend, root, 3, worker="w-2")
        signal = await wait_signal(backend, root, 4, "go")
        # a sub-workflow suspended on a step of its own
        sub = await running_step(backend, root, 5, name=OTHER)
        grandchild = await add_step(backend, sub, 0, due_at=at(1000))
        assert await backend.suspend_task(sub.id, sub.fence, [grandchild.id], at(2))
        ids = {"done": done.id, "pending": pending.id, "nap": nap.id, "held": held.id,
               "signal": signal.id, "sub": sub.id, "grandchild": grandchild.id}
        return root, ids

    @pytest.mark.asyncio
    @pytest.mark.parametrize("outcome", ["completed", "failed"])
    async def test_finishing_the_root_cancels_every_unfinished_task(
        self, backend: Backend, outcome: str
    ) -> None:
        root, ids = await self._unfinished_family(backend)
        before = {role: (await stored_task(backend, tid)).state for role, tid in ids.items()}
        assert before == {"done": "completed", "pending": "pending", "nap": "pending",
                          "held": "running", "signal": "waiting", "sub": "waiting",
                          "grandchild": "pending"}
        if outcome == "completed":
            assert await backend.complete_task(root.id, root.fence, b"1", FINISHED_AT)
        else:
            assert await backend.fail_task(root.id, root.fence, b'"boom"', FINISHED_AT, None)
        ex = await stored_execution(backend, root.execution_id)
        assert ex.state == outcome
        self.assert_time(ex.finished_at, FINISHED_AT)
        assert (await stored_task(backend, ids["done"])).state == "completed"
        for role in ("pending", "nap", "held", "signal", "sub", "grandchild"):
            task = await stored_task(backend, ids[role])
            assert task.state == "cancelled", role
            assert (task.worker_id, task.lease_expires_at) == (None, None), role
            self.assert_time(task.finished_at, FINISHED_AT)
        for state in ("pending", "waiting", "running"):
            assert await backend.count_tasks(state=state) == 0, state
        assert await backend.queue_depth() == 0
        assert await backend.claim("w", claim_filter(), 10, at(4000), at(4060)) == []

    @pytest.mark.asyncio
    async def test_a_step_left_running_is_fenced_out(self, backend: Backend) -> None:
        _, root = await start(backend)
        held = await running_step(backend, root, 0, worker="w-2")
        assert await backend.fail_task(root.id, root.fence, b'"boom"', FINISHED_AT, None)
        # its worker learns it at its next heartbeat; nothing it writes has any effect
        assert await backend.renew_leases("w-2", [(held.id, held.fence)], at(90)) == {held.id}
        assert not await backend.complete_task(held.id, held.fence, b'"late"', at(6))
        assert not await backend.fail_task(held.id, held.fence, b'"late"', at(6), "late")
        assert not await backend.retry_task(held.id, held.fence, b'"late"', at(7), at(6))
        assert not await backend.release_task(held.id, held.fence, at(6))
        assert not await backend.suspend_task(held.id, held.fence, [], at(6))
        step = new_task(parent_id=held.id, parent_attempt=held.attempt, seq=0)
        with pytest.raises(LeaseLostError):
            await backend.create_step(held.id, held.fence, step, at(6))
        stored = await stored_task(backend, held.id)
        assert (stored.state, stored.result, stored.error) == ("cancelled", None, None)
        assert await backend.get_dead_letter(held.id) is None
        ex = await stored_execution(backend, root.execution_id)
        assert (ex.state, ex.error) == ("failed", b'"boom"')
        # a lapsed lease of a cancelled task is nothing to recover
        assert await backend.claim("w-3", claim_filter(), 10, at(200), at(260)) == []

    @pytest.mark.asyncio
    async def test_finishing_gives_back_the_slots_of_the_steps_it_cancels(
        self, backend: Backend
    ) -> None:
        names = claim_filter({*claim_filter().names, CAPPED})
        _, first = await start(backend)
        capped = await add_step(backend, first, 0, name=CAPPED, max_concurrent=1)
        got = await backend.claim("w-1", names, 1, at(1), at(60))
        assert [t.id for t in got] == [capped.id]
        _, second = await start(backend, now=at(1))
        waiting = await add_step(backend, second, 0, name=CAPPED, max_concurrent=1, now=at(1))
        assert await backend.claim("w-2", names, 10, at(2), at(60)) == []  # at its cap
        assert await backend.complete_task(first.id, first.fence, b"1", at(3))
        assert (await stored_task(backend, capped.id)).state == "cancelled"
        got = await backend.claim("w-2", names, 10, at(4), at(60))
        assert [t.id for t in got] == [waiting.id]

    @pytest.mark.asyncio
    async def test_a_root_finishing_a_cancelling_execution_leaves_its_running_steps(
        self, backend: Backend
    ) -> None:
        # not live: the finish records the root only (cancel_execution's rules)
        _, root = await start(backend)
        held = await running_step(backend, root, 0, worker="w-2")
        assert await backend.cancel_execution(root.execution_id, b'"stop"', at(1)) == "cancelling"
        assert await backend.complete_task(root.id, root.fence, b"1", at(2))
        assert (await stored_task(backend, held.id)).state == "running"
        assert (await stored_execution(backend, root.execution_id)).state == "cancelling"
        assert await backend.cancel_task(held.id, held.fence, at(3))
        assert (await stored_execution(backend, root.execution_id)).state == "cancelled"

    # -- replay ------------------------------------------------------------------------------
    async def _failed_beside(
        self, backend: Backend
    ) -> tuple[TaskRecord, TaskRecord, dict[str, TaskRecord]]:
        """A root awaiting a step that is dead-lettered, beside unfinished siblings; the root
        then fails at :data:`FINISHED_AT`, cancelling them.

        Returns:
            The root's last claim, the dead-lettered step, the siblings by role (as created).
        """
        _, root = await start(backend)
        doomed = await running_step(backend, root, 0)
        done = await running_step(backend, root, 1)
        assert await backend.complete_task(done.id, done.fence, b'"done"', at(1))
        siblings = {
            "done": done,
            "pending": await add_step(backend, root, 2, due_at=at(1000)),
            "nap": await _sleep(backend, root, 3, at(3600)),
            "held": await running_step(backend, root, 4, worker="w-2"),
            "signal": await wait_signal(backend, root, 5, "go"),
            "timed": await wait_signal(backend, root, 6, "soon", timeout_at=at(500)),
        }
        assert await backend.suspend_task(root.id, root.fence, [doomed.id], at(2))
        assert await backend.fail_task(doomed.id, doomed.fence, b'"bad"', at(3), "exhausted")
        root = await claim_only(backend, root.id, now=at(4))
        assert await backend.fail_task(root.id, root.fence, b'"step failed"', FINISHED_AT, None)
        return root, doomed, siblings

    @pytest.mark.asyncio
    async def test_replay_puts_back_what_the_failure_cancelled(self, backend: Backend) -> None:
        root, doomed, siblings = await self._failed_beside(backend)
        for role, sibling in siblings.items():
            state = "completed" if role == "done" else "cancelled"
            assert (await stored_task(backend, sibling.id)).state == state, role
        assert await backend.replay_dead_letter(
            doomed.id, queue=None, reset_retries=True, now=REPLAY_AT)
        assert (await stored_execution(backend, root.execution_id)).state == "running"
        assert (await stored_task(backend, root.id)).state == "waiting"
        assert (await stored_task(backend, doomed.id)).state == "pending"
        want = {"done": "completed", "pending": "pending", "nap": "pending", "held": "pending",
                "signal": "waiting", "timed": "pending"}
        for role, sibling in siblings.items():
            task = await stored_task(backend, sibling.id)
            assert task.state == want[role], role
            if role != "done":
                assert task.finished_at is None, role
                assert task.fence > sibling.fence, role
                assert (task.worker_id, task.lease_expires_at) == (None, None), role
                assert task.attempt == sibling.attempt, role
                self.assert_time(task.due_at, sibling.due_at)
        # the worker that held one before the failure stays fenced out
        held = siblings["held"]
        assert not await backend.complete_task(held.id, held.fence, b'"late"', at(101))
        assert await backend.renew_leases("w-2", [(held.id, held.fence)], at(190)) == {held.id}
        # the revived tasks run again: the pending step (due at 1000) is claimable then
        got = await backend.claim("w-3", claim_filter(), 10, REPLAY_AT, at(160))
        assert {t.id for t in got} == {doomed.id, held.id}

    @pytest.mark.asyncio
    async def test_a_signal_wait_put_back_by_a_replay_is_served(self, backend: Backend) -> None:
        root, doomed, siblings = await self._failed_beside(backend)
        # a signal sent while the execution is failed is kept for a later wait
        assert await backend.send_signal(root.execution_id, "go", b'"early"', at(50)) == ""
        assert await backend.replay_dead_letter(
            doomed.id, queue=None, reset_retries=True, now=REPLAY_AT)
        served = await backend.send_signal(root.execution_id, "go", b'"late"', at(101))
        assert served == siblings["signal"].id
        task = await stored_task(backend, served)
        assert (task.state, task.result) == ("completed", b'"late"')

    @pytest.mark.asyncio
    async def test_a_replay_that_does_not_revive_the_execution_puts_nothing_back(
        self, backend: Backend
    ) -> None:
        # the root caught the step's failure and completed: the replay reruns the step only
        _, root = await start(backend)
        doomed = await running_step(backend, root, 0)
        pending = await add_step(backend, root, 1, due_at=at(1000))
        assert await backend.fail_task(doomed.id, doomed.fence, b'"bad"', at(1), "exhausted")
        assert await backend.complete_task(root.id, root.fence, b'"caught"', at(2))
        assert await backend.replay_dead_letter(
            doomed.id, queue=None, reset_retries=True, now=REPLAY_AT)
        assert (await stored_execution(backend, root.execution_id)).state == "completed"
        assert (await stored_task(backend, pending.id)).state == "cancelled"
        assert (await stored_task(backend, doomed.id)).state == "pending"

    @pytest.mark.asyncio
    async def test_a_replay_puts_back_nothing_that_was_cancelled_otherwise(
        self, backend: Backend
    ) -> None:
        # a task cancelled by other means (here by an operator) stays cancelled
        _, doomed, siblings = await self._failed_beside(backend)
        done = await stored_task(backend, siblings["done"].id)
        done.state = "cancelled"
        await backend.update_task(done)
        assert await backend.replay_dead_letter(
            doomed.id, queue=None, reset_retries=True, now=REPLAY_AT)
        assert (await stored_task(backend, done.id)).state == "cancelled"
        assert (await stored_task(backend, siblings["pending"].id)).state == "pending"

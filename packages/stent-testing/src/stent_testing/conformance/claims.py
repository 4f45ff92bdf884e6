"""Claims and leases: which tasks ``claim`` hands out, in what order, and what it writes."""

from __future__ import annotations

from typing import Any

import pytest
from stent.backend import Backend

from .arrange import (
    LEASE_UNTIL,
    add_step,
    claim_only,
    dispatch,
    events,
    running_step,
    start,
    stored_execution,
    stored_task,
)
from .base import ConformanceBase
from .builders import OTHER, T0, UNREGISTERED, WORK, at, claim_filter

EVERYTHING = claim_filter()


class ClaimContract(ConformanceBase):
    """``claim``: due, eligible tasks by priority then due time, leased and fenced."""

    @pytest.mark.asyncio
    async def test_claim_takes_only_due_tasks(self, backend: Backend) -> None:
        due = await dispatch(backend, due_at=at(0))
        await dispatch(backend, due_at=at(10))
        got = await backend.claim("w", EVERYTHING, 10, at(5), LEASE_UNTIL)
        assert [t.id for t in got] == [due.root.id]

    @pytest.mark.asyncio
    async def test_claim_takes_task_due_exactly_now(self, backend: Backend) -> None:
        new = await dispatch(backend, due_at=at(10))
        await claim_only(backend, new.root.id, now=at(10))

    @pytest.mark.asyncio
    async def test_claim_respects_limit(self, backend: Backend) -> None:
        for _ in range(5):
            await dispatch(backend)
        got = await backend.claim("w", EVERYTHING, 2, T0, LEASE_UNTIL)
        assert len(got) == 2
        assert await backend.count_tasks(state="pending") == 3

    @pytest.mark.asyncio
    async def test_claim_with_limit_zero_returns_nothing(self, backend: Backend) -> None:
        await dispatch(backend)
        assert await backend.claim("w", EVERYTHING, 0, T0, LEASE_UNTIL) == []
        assert await backend.count_tasks(state="pending") == 1

    @pytest.mark.asyncio
    async def test_claim_on_empty_store_returns_nothing(self, backend: Backend) -> None:
        assert await backend.claim("w", EVERYTHING, 10, T0, LEASE_UNTIL) == []

    @pytest.mark.asyncio
    async def test_claim_orders_by_priority_then_due_time(self, backend: Backend) -> None:
        low_early = await dispatch(backend, priority=-1, due_at=at(0))
        mid = await dispatch(backend, priority=0, due_at=at(1))
        high_late = await dispatch(backend, priority=5, due_at=at(3))
        high_early = await dispatch(backend, priority=5, due_at=at(2))
        order = []
        for _ in range(4):
            (task,) = await backend.claim("w", EVERYTHING, 1, at(10), LEASE_UNTIL)
            order.append(task.id)
        expected = [high_early, high_late, mid, low_early]
        assert order == [e.root.id for e in expected]

    @pytest.mark.asyncio
    async def test_claim_with_limit_takes_the_first_in_order(self, backend: Backend) -> None:
        await dispatch(backend, priority=0, due_at=at(0))
        second = await dispatch(backend, priority=1, due_at=at(2))
        first = await dispatch(backend, priority=1, due_at=at(1))
        got = await backend.claim("w", EVERYTHING, 2, at(10), LEASE_UNTIL)
        assert {t.id for t in got} == {first.root.id, second.root.id}

    @pytest.mark.asyncio
    async def test_claim_skips_unregistered_names(self, backend: Backend) -> None:
        await dispatch(backend, name=UNREGISTERED)
        assert await backend.claim("w", EVERYTHING, 10, T0, LEASE_UNTIL) == []

    @pytest.mark.asyncio
    async def test_sleep_tasks_are_claimed_by_any_worker(self, backend: Backend) -> None:
        _, root = await start(backend)
        timer = await add_step(
            backend, root, 0, name="stent.sleep", kind="sleep", due_at=at(30),
            queue="timers", tags=("gpu",),
        )
        picky = claim_filter({"app:nothing-else"}, queues=["billing"], tags=["eu"])
        got = await backend.claim("w", picky, 10, at(30), at(90))
        assert [t.id for t in got] == [timer.id]

    @pytest.mark.asyncio
    async def test_claim_with_queues_none_takes_every_queue(self, backend: Backend) -> None:
        for queue in (None, "a", "b"):
            await dispatch(backend, queue=queue)
        got = await backend.claim("w", claim_filter(queues=None), 10, T0, LEASE_UNTIL)
        assert len(got) == 3

    @pytest.mark.asyncio
    async def test_claim_takes_only_listed_queues(self, backend: Backend) -> None:
        await dispatch(backend)
        a = await dispatch(backend, queue="a")
        await dispatch(backend, queue="b")
        got = await backend.claim("w", claim_filter(queues=["a"]), 10, T0, LEASE_UNTIL)
        assert [t.id for t in got] == [a.root.id]

    @pytest.mark.asyncio
    async def test_none_in_queue_list_means_default_queue(self, backend: Backend) -> None:
        default = await dispatch(backend)
        a = await dispatch(backend, queue="a")
        await dispatch(backend, queue="b")
        got = await backend.claim("w", claim_filter(queues=[None, "a"]), 10, T0, LEASE_UNTIL)
        assert {t.id for t in got} == {default.root.id, a.root.id}

    @pytest.mark.asyncio
    @pytest.mark.parametrize("worker_tags", [None, ()], ids=["none", "empty"])
    async def test_worker_without_tags_claims_every_task(
        self, backend: Backend, worker_tags: tuple[str, ...] | None
    ) -> None:
        await dispatch(backend)
        await dispatch(backend, tags=("gpu",))
        await dispatch(backend, tags=("eu", "ssd"))
        got = await backend.claim("w", claim_filter(tags=worker_tags), 10, T0, LEASE_UNTIL)
        assert len(got) == 3

    @pytest.mark.asyncio
    async def test_tagged_worker_claims_untagged_and_overlapping_tasks(
        self, backend: Backend
    ) -> None:
        untagged = await dispatch(backend)
        overlap = await dispatch(backend, tags=("ssd", "gpu"))
        await dispatch(backend, tags=("eu",))
        got = await backend.claim("w", claim_filter(tags=["gpu", "us"]), 10, T0, LEASE_UNTIL)
        assert {t.id for t in got} == {untagged.root.id, overlap.root.id}

    @pytest.mark.asyncio
    async def test_tagged_worker_does_not_claim_disjoint_tags(self, backend: Backend) -> None:
        await dispatch(backend, tags=("eu",))
        got = await backend.claim("w", claim_filter(tags=["us"]), 10, T0, LEASE_UNTIL)
        assert got == []

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "head",
        [{"name": UNREGISTERED}, {"queue": "elsewhere"}, {"tags": ("eu",)}],
        ids=["unregistered-name", "other-queue", "disjoint-tags"],
    )
    async def test_ineligible_head_task_does_not_starve_eligible_ones(
        self, backend: Backend, head: dict[str, Any]
    ) -> None:
        for i in range(3):
            await dispatch(backend, priority=10, due_at=at(-10 + i), **head)
        eligible = await dispatch(backend, priority=0, due_at=at(0))
        picky = claim_filter({WORK}, queues=[None, "mine"], tags=["us"])
        got = await backend.claim("w", picky, 1, at(10), LEASE_UNTIL)
        assert [t.id for t in got] == [eligible.root.id]

    @pytest.mark.asyncio
    async def test_claim_bumps_fence_and_leases_to_worker(self, backend: Backend) -> None:
        new = await dispatch(backend)
        before = await stored_task(backend, new.root.id)
        claimed = await claim_only(backend, new.root.id, worker="w-7", lease_until=at(45))
        assert claimed.fence == before.fence + 1
        assert claimed.state == "running"
        assert claimed.worker_id == "w-7"
        self.assert_time(claimed.lease_expires_at, at(45))
        stored = await stored_task(backend, new.root.id)
        assert (stored.fence, stored.state, stored.worker_id) == (claimed.fence, "running", "w-7")
        self.assert_time(stored.lease_expires_at, at(45))

    @pytest.mark.asyncio
    async def test_claimed_task_is_not_claimed_again_while_leased(
        self, backend: Backend
    ) -> None:
        await start(backend)  # leased until LEASE_UNTIL
        assert await backend.claim("w-2", EVERYTHING, 10, at(59), at(120)) == []

    @pytest.mark.asyncio
    async def test_expired_lease_is_claimable_again_as_crash_recovery(
        self, backend: Backend
    ) -> None:
        _, first = await start(backend, worker="w-1")
        again = await claim_only(backend, first.id, worker="w-2", now=at(61), lease_until=at(120))
        assert again.fence == first.fence + 1
        assert again.worker_id == "w-2"
        assert again.crash_count == first.crash_count + 1
        assert again.attempt == first.attempt
        stored = await stored_task(backend, first.id)
        assert (stored.crash_count, stored.fence) == (again.crash_count, again.fence)

    @pytest.mark.asyncio
    async def test_a_lapsed_parent_awaiting_an_unfinished_step_is_not_charged(
        self, backend: Backend
    ) -> None:
        # its worker died while it awaited the step: the step is the suspect, not the parent
        _, root = await start(backend, worker="w-1")
        step = await add_step(backend, root, 0, due_at=at(1000))
        again = await claim_only(backend, root.id, worker="w-2", now=at(61), lease_until=at(120))
        assert (again.crash_count, again.fence) == (root.crash_count, root.fence + 1)
        assert (again.worker_id, again.attempt) == ("w-2", root.attempt)
        stored = await stored_task(backend, root.id)
        assert (stored.crash_count, stored.fence) == (root.crash_count, root.fence + 1)
        assert (await stored_task(backend, step.id)).state == "pending"

    @pytest.mark.asyncio
    async def test_a_lapsed_parent_awaiting_a_running_step_is_not_charged(
        self, backend: Backend
    ) -> None:
        _, root = await start(backend, worker="w-1")
        await running_step(backend, root, 0, worker="w-1", due_at=at(1000))
        again = await claim_only(backend, root.id, worker="w-2", now=at(61), lease_until=at(120))
        assert again.crash_count == root.crash_count

    @pytest.mark.asyncio
    async def test_a_lapsed_step_is_charged(self, backend: Backend) -> None:
        _, root = await start(backend, worker="w-1")
        step = await running_step(backend, root, 0, worker="w-1")
        assert await backend.suspend_task(root.id, root.fence, [step.id], at(1))
        again = await claim_only(backend, step.id, worker="w-2", now=at(61), lease_until=at(120))
        assert (again.crash_count, again.fence) == (step.crash_count + 1, step.fence + 1)

    @pytest.mark.asyncio
    async def test_a_lapsed_parent_whose_steps_all_finished_is_charged(
        self, backend: Backend
    ) -> None:
        _, root = await start(backend, worker="w-1")
        done = await running_step(backend, root, 0, worker="w-1")
        assert await backend.complete_task(done.id, done.fence, b"1", at(1))
        failed = await running_step(backend, root, 1, worker="w-1")
        assert await backend.fail_task(failed.id, failed.fence, b"e", at(2), None)
        await add_step(backend, root, 2, state="completed", result=b"2")
        again = await claim_only(backend, root.id, worker="w-2", now=at(61), lease_until=at(120))
        assert again.crash_count == root.crash_count + 1

    @pytest.mark.asyncio
    async def test_an_unfinished_step_of_an_earlier_attempt_does_not_spare_the_parent(
        self, backend: Backend
    ) -> None:
        _, root = await start(backend, worker="w-1")
        await add_step(backend, root, 0, due_at=at(1000))  # left behind by attempt 1
        assert await backend.retry_task(root.id, root.fence, b"e", at(1), at(1))
        second = await claim_only(backend, root.id, worker="w-1", now=at(1), lease_until=at(60))
        assert second.attempt == root.attempt + 1
        again = await claim_only(backend, root.id, worker="w-2", now=at(61), lease_until=at(120))
        assert again.crash_count == second.crash_count + 1

    @pytest.mark.asyncio
    async def test_a_suspect_is_charged_again_only_for_a_run_marked_alone(
        self, backend: Backend
    ) -> None:
        # the first death is charged whatever the run shared its worker with
        _, first = await start(backend, worker="w-1")
        second = await claim_only(backend, first.id, worker="w-2", now=at(61), lease_until=at(120))
        assert second.crash_count == first.crash_count + 1
        # a suspect whose run was not marked alone died beside other work: not charged
        third = await claim_only(backend, second.id, worker="w-3", now=at(121),
                                 lease_until=at(180))
        assert (third.crash_count, third.fence) == (second.crash_count, second.fence + 1)
        # marked alone, then its worker died: charged
        assert await backend.mark_alone(third.id, third.fence, True)
        fourth = await claim_only(backend, third.id, worker="w-4", now=at(181),
                                  lease_until=at(240))
        assert fourth.crash_count == third.crash_count + 1
        # the claim cleared the mark: the next death (not marked) is not charged
        fifth = await claim_only(backend, fourth.id, worker="w-5", now=at(241),
                                 lease_until=at(300))
        assert fifth.crash_count == fourth.crash_count
        # marked, then unmarked (it started awaiting a step): not charged
        assert await backend.mark_alone(fifth.id, fifth.fence, True)
        assert await backend.mark_alone(fifth.id, fifth.fence, False)
        sixth = await claim_only(backend, fifth.id, worker="w-6", now=at(301),
                                 lease_until=at(360))
        assert (await stored_task(backend, first.id)).crash_count == sixth.crash_count
        assert sixth.crash_count == fifth.crash_count

    @pytest.mark.asyncio
    async def test_a_suspect_marked_alone_awaiting_an_unfinished_step_is_not_charged(
        self, backend: Backend
    ) -> None:
        _, first = await start(backend, worker="w-1")
        second = await claim_only(backend, first.id, worker="w-2", now=at(61), lease_until=at(120))
        assert await backend.mark_alone(second.id, second.fence, True)
        await add_step(backend, second, 0, due_at=at(1000))
        again = await claim_only(backend, first.id, worker="w-3", now=at(121),
                                 lease_until=at(180))
        assert again.crash_count == second.crash_count

    @pytest.mark.asyncio
    async def test_mark_alone_is_fenced(self, backend: Backend) -> None:
        _, first = await start(backend, worker="w-1")
        second = await claim_only(backend, first.id, worker="w-2", now=at(61), lease_until=at(120))
        assert not await backend.mark_alone(first.id, first.fence, True)  # stale fence
        assert not await backend.mark_alone("no-such-task", 1, True)
        assert await backend.complete_task(second.id, second.fence, b"1", at(62))
        assert not await backend.mark_alone(second.id, second.fence, True)  # not running
        stored = await stored_task(backend, first.id)
        assert (stored.state, stored.fence, stored.crash_count) == (
            "completed", second.fence, second.crash_count)

    @pytest.mark.asyncio
    async def test_claim_of_pending_task_is_not_a_crash(self, backend: Backend) -> None:
        _, claimed = await start(backend)
        assert claimed.crash_count == 0

    @pytest.mark.asyncio
    async def test_claiming_root_moves_execution_to_running(self, backend: Backend) -> None:
        new, _ = await start(backend, now=at(3))
        ex = await stored_execution(backend, new.id)
        assert ex.state == "running"
        self.assert_time(ex.started_at, at(3))
        assert events(ex) == ["dispatched", "running"]

    @pytest.mark.asyncio
    async def test_claim_does_not_take_finished_tasks(self, backend: Backend) -> None:
        _, done = await start(backend)
        await backend.complete_task(done.id, done.fence, b"1", at(1))
        _, failed = await start(backend, now=at(1))
        await backend.fail_task(failed.id, failed.fence, b"e", at(2), None)
        assert await backend.claim("w", EVERYTHING, 10, at(1000), at(2000)) == []

    # -- concurrency caps (SPEC 2 ``max_concurrent``: cluster-wide, enforced atomically) -----
    @pytest.mark.asyncio
    async def test_claim_respects_max_concurrent(self, backend: Backend) -> None:
        for _ in range(3):
            await dispatch(backend, max_concurrent=2)
        got = await backend.claim("w", EVERYTHING, 10, T0, LEASE_UNTIL)
        assert len(got) == 2

    @pytest.mark.asyncio
    async def test_max_concurrent_counts_tasks_already_running(self, backend: Backend) -> None:
        await start(backend, max_concurrent=1)
        await dispatch(backend, max_concurrent=1)
        assert await backend.claim("w-2", EVERYTHING, 10, at(1), LEASE_UNTIL) == []

    @pytest.mark.asyncio
    async def test_max_concurrent_slot_frees_when_a_task_finishes(
        self, backend: Backend
    ) -> None:
        _, first = await start(backend, max_concurrent=1)
        waiting = await dispatch(backend, max_concurrent=1)
        await backend.complete_task(first.id, first.fence, b"1", at(1))
        await claim_only(backend, waiting.root.id, worker="w-2", now=at(2))

    @pytest.mark.asyncio
    async def test_max_concurrent_does_not_hold_back_other_functions(
        self, backend: Backend
    ) -> None:
        await start(backend, max_concurrent=1)
        await dispatch(backend, max_concurrent=1)
        other = await dispatch(backend, name=OTHER)
        got = await backend.claim("w-2", EVERYTHING, 10, at(1), LEASE_UNTIL)
        assert [t.id for t in got] == [other.root.id]

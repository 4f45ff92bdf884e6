"""Signals: ``create_signal_wait`` and ``send_signal`` (a FIFO per execution and name)."""

from __future__ import annotations

import pytest
from stent.backend import Backend
from stent.errors import LeaseLostError

from .arrange import (
    claim_only,
    dispatch,
    signal_step,
    start,
    stored_task,
    wait_signal,
)
from .base import ConformanceBase
from .builders import at, claim_filter, new_execution


class SignalContract(ConformanceBase):
    """Signal waits are steps; signals are kept in order until a wait consumes them."""

    @pytest.mark.asyncio
    async def test_signal_sent_before_the_wait_is_kept_for_it(self, backend: Backend) -> None:
        new, root = await start(backend)
        assert await backend.send_signal(new.id, "go", b'"early"', at(1)) == ""
        wait = await wait_signal(backend, root, 0, "go", now=at(2))
        assert (wait.state, wait.result, wait.kind) == ("completed", b'"early"', "signal")
        stored = await stored_task(backend, wait.id)
        assert (stored.state, stored.result) == ("completed", b'"early"')
        assert stored.finished_at is not None

    @pytest.mark.asyncio
    async def test_buffered_signals_are_consumed_in_the_order_sent(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        for i, payload in enumerate((b"1", b"2", b"3")):
            assert await backend.send_signal(new.id, "n", payload, at(1 + i)) == ""
        got = [(await wait_signal(backend, root, seq, "n", now=at(5))).result
               for seq in range(3)]
        assert got == [b"1", b"2", b"3"]
        fourth = await wait_signal(backend, root, 3, "n", now=at(6))
        assert fourth.state == "waiting" and fourth.result is None

    @pytest.mark.asyncio
    async def test_waiters_of_a_name_are_served_in_creation_order(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        waits = [await wait_signal(backend, root, seq, "n", now=at(1)) for seq in range(3)]
        assert [w.state for w in waits] == ["waiting"] * 3
        served = [await backend.send_signal(new.id, "n", p, at(2)) for p in (b"a", b"b", b"c")]
        assert served == [w.id for w in waits]
        for wait, payload in zip(waits, (b"a", b"b", b"c"), strict=True):
            stored = await stored_task(backend, wait.id)
            assert (stored.state, stored.result) == ("completed", payload)
        steps = await backend.load_steps(root.id, root.attempt)
        assert [(s.kind, s.state, s.result) for s in steps] == [
            ("signal", "completed", b"a"), ("signal", "completed", b"b"),
            ("signal", "completed", b"c"),
        ]

    @pytest.mark.asyncio
    async def test_one_name_may_be_awaited_many_times(self, backend: Backend) -> None:
        new, root = await start(backend)
        first = await wait_signal(backend, root, 0, "n", now=at(1))
        assert await backend.send_signal(new.id, "n", b"1", at(2)) == first.id
        assert await backend.send_signal(new.id, "n", b"2", at(3)) == ""
        second = await wait_signal(backend, root, 1, "n", now=at(4))
        assert second.result == b"2"
        third = await wait_signal(backend, root, 2, "n", now=at(5))
        assert third.state == "waiting"
        assert await backend.send_signal(new.id, "n", b"3", at(6)) == third.id
        assert (await stored_task(backend, third.id)).result == b"3"

    @pytest.mark.asyncio
    async def test_signals_are_separate_per_name_and_per_execution(
        self, backend: Backend
    ) -> None:
        one, root = await start(backend)
        two = await dispatch(backend)
        wait = await wait_signal(backend, root, 0, "a", now=at(1))
        assert await backend.send_signal(one.id, "b", b'"b"', at(2)) == ""
        assert await backend.send_signal(two.id, "a", b'"other"', at(2)) == ""
        assert (await stored_task(backend, wait.id)).state == "waiting"
        other = await wait_signal(backend, root, 1, "b", now=at(3))
        assert other.result == b'"b"'
        assert await backend.send_signal(one.id, "a", b'"a"', at(4)) == wait.id

    @pytest.mark.asyncio
    async def test_signal_to_an_unknown_execution_returns_none_and_keeps_nothing(
        self, backend: Backend
    ) -> None:
        later = new_execution()
        assert await backend.send_signal(later.id, "n", b"1", at(1)) is None
        assert await backend.get_execution(later.id) is None
        assert await backend.create_execution(later, at(2)) == (later.id, True)
        got = await backend.claim("w", claim_filter(), 1, at(2), at(60))
        assert [t.id for t in got] == [later.root.id]
        wait = await wait_signal(backend, got[0], 0, "n", now=at(3))
        assert wait.state == "waiting" and wait.result is None

    @pytest.mark.asyncio
    async def test_wait_without_timeout_is_born_waiting_and_never_claimed(
        self, backend: Backend
    ) -> None:
        _, root = await start(backend)
        wait = await wait_signal(backend, root, 0, "n", now=at(1))
        assert wait.state == "waiting" and wait.kind == "signal"
        assert await backend.claim("w", claim_filter(), 10, at(50), at(100)) == []
        assert (await stored_task(backend, wait.id)).state == "waiting"

    @pytest.mark.asyncio
    async def test_wait_with_timeout_is_born_pending_and_any_worker_claims_it_when_due(
        self, backend: Backend
    ) -> None:
        _, root = await start(backend)
        wait = await wait_signal(backend, root, 0, "n", timeout_at=at(30), now=at(1),
                                 queue="io", tags=("ssd",))
        assert wait.state == "pending"
        self.assert_time((await stored_task(backend, wait.id)).due_at, at(30))
        picky = claim_filter(["app:nothing"], queues=["elsewhere"], tags=["gpu"])
        assert await backend.claim("w", picky, 10, at(29), at(59)) == []
        got = await backend.claim("w", picky, 10, at(31), at(59))
        assert [t.id for t in got] == [wait.id]
        assert (got[0].state, got[0].kind, got[0].worker_id) == ("running", "signal", "w")

    @pytest.mark.asyncio
    async def test_a_pending_waiter_is_served_before_its_timeout(self, backend: Backend) -> None:
        new, root = await start(backend)
        wait = await wait_signal(backend, root, 0, "n", timeout_at=at(30), now=at(1))
        assert await backend.send_signal(new.id, "n", b'"in time"', at(5)) == wait.id
        stored = await stored_task(backend, wait.id)
        assert (stored.state, stored.result) == ("completed", b'"in time"')
        assert await backend.claim("w", claim_filter(), 10, at(31), at(59)) == []

    @pytest.mark.asyncio
    async def test_a_claimed_waiter_is_not_served_and_the_signal_stays_buffered(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        wait = await wait_signal(backend, root, 0, "n", timeout_at=at(10), now=at(1))
        claimed = await backend.claim("timer", claim_filter(), 1, at(11), at(41))
        assert [t.id for t in claimed] == [wait.id]
        assert await backend.send_signal(new.id, "n", b'"late"', at(12)) == ""
        stored = await stored_task(backend, wait.id)
        assert (stored.state, stored.result) == ("running", None)
        # the worker fails it with its timeout; the signal is the next wait's
        assert await backend.fail_task(wait.id, claimed[0].fence, b'"timeout"', at(13), None)
        again = await wait_signal(backend, root, 1, "n", now=at(14))
        assert (again.state, again.result) == ("completed", b'"late"')

    @pytest.mark.asyncio
    async def test_a_finished_waiter_is_skipped_for_the_next_live_one(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        timed_out = await wait_signal(backend, root, 0, "n", timeout_at=at(10), now=at(1))
        claimed = await backend.claim("timer", claim_filter(), 1, at(11), at(41))
        assert await backend.fail_task(timed_out.id, claimed[0].fence, b'"t"', at(12), None)
        live = await wait_signal(backend, root, 1, "n", now=at(13))
        assert await backend.send_signal(new.id, "n", b"1", at(14)) == live.id
        assert (await stored_task(backend, timed_out.id)).state == "failed"

    @pytest.mark.asyncio
    async def test_delivery_wakes_the_suspended_parent(self, backend: Backend) -> None:
        new, root = await start(backend)
        wait = await wait_signal(backend, root, 0, "n", now=at(1))
        assert await backend.suspend_task(root.id, root.fence, [wait.id], at(2))
        assert (await stored_task(backend, root.id)).state == "waiting"
        assert await backend.send_signal(new.id, "n", b'"go"', at(3)) == wait.id
        assert (await stored_task(backend, root.id)).state == "pending"
        outcomes = await backend.get_outcomes([wait.id])
        assert [(o.state, o.result) for o in outcomes] == [("completed", b'"go"')]
        resumed = await backend.claim("w2", claim_filter(), 10, at(4), at(64))
        assert [t.id for t in resumed] == [root.id]

    @pytest.mark.asyncio
    async def test_signal_wait_is_fenced_on_its_parent(self, backend: Backend) -> None:
        new, root = await start(backend)
        assert await backend.send_signal(new.id, "n", b"1", at(1)) == ""
        stale = signal_step(root, 0)
        with pytest.raises(LeaseLostError):
            await backend.create_signal_wait(root.id, root.fence + 1, stale, "n", at(2))
        assert await backend.get_task(stale.id) is None
        wait = await wait_signal(backend, root, 0, "n", now=at(3))
        assert wait.result == b"1"  # the failed attempt consumed nothing

    @pytest.mark.asyncio
    async def test_no_signal_wait_starts_under_a_cancelling_execution(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        await backend.cancel_execution(new.id, b"cancelled", at(1))
        step = signal_step(root, 0)
        with pytest.raises(LeaseLostError):
            await backend.create_signal_wait(root.id, root.fence, step, "n", at(2))
        assert await backend.get_task(step.id) is None

    @pytest.mark.asyncio
    async def test_replayed_wait_returns_its_row_and_consumes_no_other_signal(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        for payload in (b"1", b"2"):
            await backend.send_signal(new.id, "n", payload, at(1))
        first = await wait_signal(backend, root, 0, "n", now=at(2))
        replayed = signal_step(root, 0)
        row, created = await backend.create_signal_wait(root.id, root.fence, replayed, "n",
                                                        at(3))
        assert created is False
        assert (row.id, row.state, row.result) == (first.id, "completed", b"1")
        assert await backend.get_task(replayed.id) is None
        second = await wait_signal(backend, root, 1, "n", now=at(4))
        assert second.result == b"2"

    @pytest.mark.asyncio
    async def test_replayed_waiting_wait_stays_the_one_waiter(self, backend: Backend) -> None:
        new, root = await start(backend)
        first = await wait_signal(backend, root, 0, "n", now=at(1))
        row, created = await backend.create_signal_wait(
            root.id, root.fence, signal_step(root, 0), "n", at(2)
        )
        assert (created, row.id, row.state) == (False, first.id, "waiting")
        assert await backend.send_signal(new.id, "n", b"1", at(3)) == first.id
        # the replay did not add a second waiter: the next signal is kept
        assert await backend.send_signal(new.id, "n", b"2", at(4)) == ""

    @pytest.mark.asyncio
    async def test_waits_left_behind_by_a_retried_parent_are_never_served(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        orphan = await wait_signal(backend, root, 0, "n", now=at(1))
        assert orphan.state == "waiting"
        # the parent's attempt fails and is retried: attempt 2 starts with fresh steps
        assert await backend.retry_task(root.id, root.fence, b"err", at(2), at(2))
        assert await backend.send_signal(new.id, "n", b"for attempt 2", at(3)) == ""
        assert (await stored_task(backend, orphan.id)).state == "waiting"
        retried = await claim_only(backend, root.id, now=at(4))
        assert retried.attempt == 2
        fresh = await wait_signal(backend, retried, 0, "n", now=at(5))
        assert (fresh.state, fresh.result) == ("completed", b"for attempt 2")

"""Times: every stored time comes back as an aware UTC datetime equal to what was passed in."""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest
from stent.backend import Backend
from stent.records import Lease

from .arrange import add_step, claim_only, dispatch, stored_execution, stored_task
from .base import ConformanceBase, naive_local
from .builders import at, claim_filter

PLUS_TWO = timezone(timedelta(hours=2))
MINUS_SEVEN = timezone(timedelta(hours=-7))


class TimeContract(ConformanceBase):
    """Round trips of times, to the suite's ``time_tolerance`` (1 µs by default)."""

    @pytest.mark.asyncio
    async def test_task_times_come_back_in_utc_as_given(self, backend: Backend) -> None:
        new = await dispatch(backend, now=at(0.000001), due_at=at(1.000002))
        claimed = await claim_only(backend, new.root.id, now=at(2.000003),
                                   lease_until=at(62.000004))
        self.assert_time(claimed.lease_expires_at, at(62.000004))
        await backend.complete_task(claimed.id, claimed.fence, b"1", at(3.000005))
        task = await stored_task(backend, new.root.id)
        self.assert_time(task.created_at, at(0.000001))
        self.assert_time(task.due_at, at(1.000002))
        self.assert_time(task.started_at, at(2.000003))
        self.assert_time(task.finished_at, at(3.000005))

    @pytest.mark.asyncio
    async def test_renewed_lease_comes_back_in_utc_as_given(self, backend: Backend) -> None:
        new = await dispatch(backend)
        claimed = await claim_only(backend, new.root.id)
        await backend.renew_leases(claimed.worker_id or "", [(claimed.id, claimed.fence)],
                                   at(90.654321))
        self.assert_time((await stored_task(backend, claimed.id)).lease_expires_at,
                         at(90.654321))

    @pytest.mark.asyncio
    async def test_step_times_come_back_in_utc_as_given(self, backend: Backend) -> None:
        new = await dispatch(backend)
        root = await claim_only(backend, new.root.id)
        child = await add_step(backend, root, 0, now=at(4.25), due_at=at(7.5),
                               lease=Lease("w", at(30.000007)))
        stored = await stored_task(backend, child.id)
        self.assert_time(stored.created_at, at(4.25))
        self.assert_time(stored.due_at, at(7.5))
        self.assert_time(stored.lease_expires_at, at(30.000007))

    @pytest.mark.asyncio
    async def test_execution_times_come_back_in_utc_as_given(self, backend: Backend) -> None:
        new = await dispatch(backend, now=at(0.5), deadline=at(3600.999999))
        root = await claim_only(backend, new.root.id, now=at(1.5))
        await backend.complete_task(root.id, root.fence, b"1", at(2.5))
        ex = await stored_execution(backend, new.id)
        self.assert_time(ex.created_at, at(0.5))
        self.assert_time(ex.deadline, at(3600.999999))
        self.assert_time(ex.started_at, at(1.5))
        self.assert_time(ex.finished_at, at(2.5))

    @pytest.mark.asyncio
    async def test_dead_letter_time_comes_back_in_utc_as_given(self, backend: Backend) -> None:
        new = await dispatch(backend)
        root = await claim_only(backend, new.root.id)
        await backend.fail_task(root.id, root.fence, b"e", at(5.000009), "poison")
        dl = await backend.get_dead_letter(root.id)
        assert dl is not None
        self.assert_time(dl.created_at, at(5.000009))
        (listed,) = await backend.list_dead_letters()
        self.assert_time(listed.created_at, at(5.000009))

    @pytest.mark.asyncio
    async def test_times_in_other_offsets_are_stored_as_the_same_instant(
        self, backend: Backend
    ) -> None:
        new = await dispatch(backend, now=at(0).astimezone(MINUS_SEVEN),
                             due_at=at(10).astimezone(PLUS_TWO))
        task = await stored_task(backend, new.root.id)
        self.assert_time(task.created_at, at(0))
        self.assert_time(task.due_at, at(10))

    @pytest.mark.asyncio
    async def test_claim_compares_instants_across_offsets(self, backend: Backend) -> None:
        new = await dispatch(backend, due_at=at(10).astimezone(PLUS_TWO))
        filt = claim_filter()
        assert await backend.claim("w", filt, 10, at(9).astimezone(MINUS_SEVEN), at(90)) == []
        got = await backend.claim("w", filt, 10, at(10).astimezone(MINUS_SEVEN), at(90))
        assert [t.id for t in got] == [new.root.id]

    @pytest.mark.asyncio
    async def test_update_task_reads_naive_due_time_as_local_time(
        self, backend: Backend, local_zone: timedelta
    ) -> None:
        new = await dispatch(backend)
        task = await stored_task(backend, new.root.id)
        task.due_at = naive_local(at(300))
        await backend.update_task(task)
        self.assert_time((await stored_task(backend, new.root.id)).due_at, at(300))
        assert await backend.claim("w", claim_filter(), 10, at(299), at(400)) == []
        assert len(await backend.claim("w", claim_filter(), 10, at(300), at(400))) == 1

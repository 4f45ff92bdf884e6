"""Maintenance: the ``acquire_maintenance`` lease, and retention in bounded batches
(``cleanup_executions`` and ``cleanup_dead_letters`` with ``limit``)."""

from __future__ import annotations

import dataclasses

import pytest
from stent.backend import Backend

from .arrange import claim_only, start, stored_task, wait_signal
from .base import ConformanceBase
from .builders import at, new_id
from .cleanup import finished
from .deadletters import dead_child

LEASE = "retention"


class MaintenanceContract(ConformanceBase):
    """One maintenance holder at a time; cleanups that delete at most ``limit`` at once."""

    @pytest.mark.asyncio
    async def test_a_free_maintenance_lease_is_taken(self, backend: Backend) -> None:
        assert await backend.acquire_maintenance(LEASE, "worker-1", at(30), at(0)) is True

    @pytest.mark.asyncio
    async def test_a_held_maintenance_lease_is_refused_to_others(
        self, backend: Backend
    ) -> None:
        assert await backend.acquire_maintenance(LEASE, "worker-1", at(30), at(0))
        assert await backend.acquire_maintenance(LEASE, "worker-2", at(40), at(10)) is False
        assert await backend.acquire_maintenance(LEASE, "worker-2", at(59), at(29)) is False

    @pytest.mark.asyncio
    async def test_the_holder_renews_its_maintenance_lease(self, backend: Backend) -> None:
        assert await backend.acquire_maintenance(LEASE, "worker-1", at(30), at(0))
        assert await backend.acquire_maintenance(LEASE, "worker-1", at(60), at(20)) is True
        # renewed: still held past the first expiry
        assert await backend.acquire_maintenance(LEASE, "worker-2", at(90), at(45)) is False

    @pytest.mark.asyncio
    async def test_an_expired_maintenance_lease_is_taken_over(self, backend: Backend) -> None:
        assert await backend.acquire_maintenance(LEASE, "worker-1", at(30), at(0))
        assert await backend.acquire_maintenance(LEASE, "worker-2", at(61), at(31)) is True
        assert await backend.acquire_maintenance(LEASE, "worker-1", at(62), at(32)) is False

    @pytest.mark.asyncio
    async def test_maintenance_leases_of_other_names_are_independent(
        self, backend: Backend
    ) -> None:
        assert await backend.acquire_maintenance(LEASE, "worker-1", at(30), at(0))
        assert await backend.acquire_maintenance("expiry", "worker-2", at(30), at(0)) is True

    @pytest.mark.asyncio
    async def test_cleanup_executions_deletes_at_most_limit(self, backend: Backend) -> None:
        for t in (10, 11, 12):
            await finished(backend, at(t))
        assert await backend.cleanup_executions(at(20), limit=2) == 2
        assert await backend.count_executions() == 1
        assert await backend.cleanup_executions(at(20), limit=2) == 1
        assert await backend.count_executions() == 0
        assert await backend.cleanup_executions(at(20), limit=2) == 0

    @pytest.mark.asyncio
    async def test_cleanup_executions_deletes_their_signals_and_waiters(
        self, backend: Backend
    ) -> None:
        new, root = await start(backend)
        waiter = await wait_signal(backend, root, 0, "a", now=at(1))
        assert await backend.send_signal(new.id, "b", b'"kept"', at(2)) == ""
        assert await backend.complete_task(root.id, root.fence, b"1", at(3))
        assert await backend.cleanup_executions(at(10)) == 1
        assert await backend.get_task(waiter.id) is None
        assert await backend.send_signal(new.id, "a", b"1", at(11)) is None
        # an execution created again under the same id starts with no signal
        again = dataclasses.replace(new, root=dataclasses.replace(new.root, id=new_id()))
        assert await backend.create_execution(again, at(12)) == (new.id, True)
        root2 = await claim_only(backend, again.root.id, now=at(12))
        wait_b = await wait_signal(backend, root2, 0, "b", now=at(13))
        assert (wait_b.state, wait_b.result) == ("waiting", None)
        assert await backend.send_signal(new.id, "b", b'"new"', at(14)) == wait_b.id
        assert (await stored_task(backend, wait_b.id)).result == b'"new"'

    @pytest.mark.asyncio
    async def test_cleanup_dead_letters_deletes_at_most_limit(self, backend: Backend) -> None:
        for _ in range(3):
            await dead_child(backend)
        assert len(await backend.list_dead_letters()) == 3
        assert await backend.cleanup_dead_letters(at(100), limit=2) == 2
        assert len(await backend.list_dead_letters()) == 1
        assert await backend.cleanup_dead_letters(at(100), limit=2) == 1
        assert await backend.cleanup_dead_letters(at(100)) == 0

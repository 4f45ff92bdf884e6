"""Concurrency: operations racing on one backend keep their one-transaction guarantees."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from stent.backend import Backend

from .arrange import LEASE_UNTIL, dispatch, start, stored_task
from .base import ConformanceBase
from .builders import at, claim_filter, new_execution, new_task

CLAIMERS = 20
TASKS = 50


class ConcurrencyContract(ConformanceBase):
    """Racing claims, step inserts, completions and dispatches."""

    @pytest.mark.asyncio
    async def test_concurrent_claims_never_hand_a_task_to_two_claimers(
        self, backend: Backend
    ) -> None:
        expected = {(await dispatch(backend)).root.id for _ in range(TASKS)}
        filt = claim_filter()
        batches = await asyncio.gather(*(
            backend.claim(f"w-{i}", filt, 5, at(1), LEASE_UNTIL) for i in range(CLAIMERS)
        ))
        owners = Counter(t.id for batch in batches for t in batch)
        assert [tid for tid, n in owners.items() if n > 1] == []
        for i, batch in enumerate(batches):
            assert len(batch) <= 5
            for claimed in batch:
                stored = await stored_task(backend, claimed.id)
                assert (stored.worker_id, stored.fence) == (f"w-{i}", claimed.fence)
        # Claims may skip rows another claimer has locked; whatever is left is still there.
        rest = await backend.claim("w-last", filt, TASKS, at(2), LEASE_UNTIL)
        assert set(owners).isdisjoint(t.id for t in rest)
        assert set(owners) | {t.id for t in rest} == expected

    @pytest.mark.asyncio
    async def test_concurrent_create_step_at_one_key_creates_one_row(
        self, backend: Backend
    ) -> None:
        new, parent = await start(backend)
        attempts = [
            new_task(parent_id=parent.id, parent_attempt=parent.attempt, seq=0, args=f"[{i}]"
                     .encode())
            for i in range(CLAIMERS)
        ]
        results = await asyncio.gather(*(
            backend.create_step(parent.id, parent.fence, step, at(1)) for step in attempts
        ))
        assert sum(created for _, created in results) == 1
        (winner,) = [row for row, created in results if created]
        assert {row.id for row, _ in results} == {winner.id}
        assert len(await backend.list_tasks_for_execution(new.id)) == 2
        (step,) = await backend.load_steps(parent.id, parent.attempt)
        assert (step.task_id, step.arg_digest) == (winner.id, winner.arg_digest)

    @pytest.mark.asyncio
    async def test_concurrent_completions_with_one_fence_record_one_result(
        self, backend: Backend
    ) -> None:
        _, task = await start(backend)
        results = await asyncio.gather(*(
            backend.complete_task(task.id, task.fence, f"{i}".encode(), at(1))
            for i in range(CLAIMERS)
        ))
        assert sum(results) == 1
        winner = results.index(True)
        assert (await stored_task(backend, task.id)).result == f"{winner}".encode()

    @pytest.mark.asyncio
    async def test_concurrent_dispatches_with_one_idempotency_key_create_one_execution(
        self, backend: Backend
    ) -> None:
        attempts = [new_execution(idempotency_key="once") for _ in range(CLAIMERS)]
        results = await asyncio.gather(*(
            backend.create_execution(new, at(0)) for new in attempts
        ))
        assert sum(created for _, created in results) == 1
        (winner,) = [eid for eid, created in results if created]
        assert {eid for eid, _ in results} == {winner}
        assert await backend.count_executions() == 1
        assert await backend.count_tasks() == 1

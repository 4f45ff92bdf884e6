"""Dispatch: ``create_execution`` and how an execution and its root task are stored."""

from __future__ import annotations

import pytest
from stent.backend import Backend

from .arrange import dispatch, events, stored_execution, stored_task
from .base import ConformanceBase
from .builders import T0, at, new_execution, new_id

RETRY_POLICY = {
    "max_attempts": 5,
    "initial_delay": 0.5,
    "backoff_factor": 3.0,
    "max_delay": 30.0,
    "jitter": 0.0,
    "retry_for": ["builtins.ValueError", "myapp.errors:Transient"],
    "no_retry_for": [],
}


class ExecutionContract(ConformanceBase):
    """``create_execution``, ``get_execution`` and the stored root task."""

    @pytest.mark.asyncio
    async def test_create_execution_returns_its_id_and_created(self, backend: Backend) -> None:
        new = new_execution()
        assert await backend.create_execution(new, T0) == (new.id, True)

    @pytest.mark.asyncio
    async def test_create_execution_with_existing_id_creates_nothing(
        self, backend: Backend
    ) -> None:
        new = await dispatch(backend)
        again = new_execution(id=new.id)  # same execution id, another root task id
        assert await backend.create_execution(again, at(1)) == (new.id, False)
        assert await backend.count_executions() == 1
        assert await backend.count_tasks() == 1
        assert await backend.get_task(again.root.id) is None

    @pytest.mark.asyncio
    async def test_create_execution_with_same_idempotency_key_returns_first_id(
        self, backend: Backend
    ) -> None:
        first = await dispatch(backend, idempotency_key="order-42")
        second = new_execution(idempotency_key="order-42")
        assert await backend.create_execution(second, at(1)) == (first.id, False)
        assert await backend.get_execution(second.id) is None
        assert await backend.get_task(second.root.id) is None
        assert await backend.count_executions() == 1

    @pytest.mark.asyncio
    async def test_executions_without_idempotency_key_do_not_collide(
        self, backend: Backend
    ) -> None:
        await dispatch(backend)
        await dispatch(backend)
        assert await backend.count_executions() == 2

    @pytest.mark.asyncio
    async def test_different_idempotency_keys_create_different_executions(
        self, backend: Backend
    ) -> None:
        await dispatch(backend, idempotency_key="a")
        await dispatch(backend, idempotency_key="b")
        assert await backend.count_executions() == 2

    @pytest.mark.asyncio
    async def test_root_task_is_stored_pending_with_its_fields(self, backend: Backend) -> None:
        new = await dispatch(
            backend, now=at(-5), name="billing:charge", args=b'[1, "two"]', queue="billing",
            tags=("gpu", "eu"), priority=7, retry_policy=RETRY_POLICY, timeout_s=12.5,
            due_at=at(30),
        )
        task = await stored_task(backend, new.root.id)
        assert task.execution_id == new.id
        assert task.parent_id is None
        assert task.step_name == "billing:charge"
        assert task.kind == "function"
        assert task.state == "pending"
        assert task.args == b'[1, "two"]'
        assert task.arg_digest == new.root.arg_digest
        assert task.queue == "billing"
        assert tuple(task.tags) == ("gpu", "eu")
        assert task.priority == 7
        assert task.retry_policy == RETRY_POLICY
        assert task.timeout_s == 12.5
        assert task.attempt == 1
        assert task.retries == 0
        assert task.crash_count == 0
        assert task.worker_id is None
        assert task.lease_expires_at is None
        assert task.result is None
        assert task.error is None
        self.assert_time(task.due_at, at(30))
        self.assert_time(task.created_at, at(-5))

    @pytest.mark.asyncio
    async def test_root_task_keeps_binary_arguments_exactly(self, backend: Backend) -> None:
        args = bytes(range(256)) + b"\x00\xff\x00"
        new = await dispatch(backend, args=args)
        assert (await stored_task(backend, new.root.id)).args == args
        assert (await stored_execution(backend, new.id)).args == args

    @pytest.mark.asyncio
    async def test_root_task_in_default_queue_has_queue_none(self, backend: Backend) -> None:
        new = await dispatch(backend)
        task = await stored_task(backend, new.root.id)
        assert task.queue is None
        assert tuple(task.tags) == ()

    @pytest.mark.asyncio
    async def test_execution_is_stored_pending_with_its_fields(self, backend: Backend) -> None:
        new = await dispatch(
            backend, now=at(-5), name="billing:charge", args=b"[3]", queue="billing",
            tags=("eu",), priority=-2, idempotency_key="k-1", deadline=at(3600),
        )
        ex = await stored_execution(backend, new.id)
        assert ex.id == new.id
        assert ex.function == "billing:charge"
        assert ex.state == "pending"
        assert ex.root_task_id == new.root.id
        assert ex.args == b"[3]"
        assert ex.queue == "billing"
        assert tuple(ex.tags) == ("eu",)
        assert ex.priority == -2
        assert ex.idempotency_key == "k-1"
        assert ex.result is None
        assert ex.error is None
        assert ex.started_at is None
        assert ex.finished_at is None
        self.assert_time(ex.created_at, at(-5))
        self.assert_time(ex.deadline, at(3600))

    @pytest.mark.asyncio
    async def test_execution_progress_starts_with_dispatched(self, backend: Backend) -> None:
        new = await dispatch(backend)
        assert events(await stored_execution(backend, new.id)) == ["dispatched"]

    @pytest.mark.asyncio
    async def test_get_execution_of_unknown_id_returns_none(self, backend: Backend) -> None:
        await dispatch(backend)
        assert await backend.get_execution(new_id()) is None

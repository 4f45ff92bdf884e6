"""Trace context: the ``traceparent`` of the span that created a task, stored as given."""

from __future__ import annotations

import pytest
from stent.backend import Backend

from .arrange import claim_only, dispatch, signal_step, start, stored_task
from .base import ConformanceBase
from .builders import at, claim_filter, new_task

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


class TraceContextContract(ConformanceBase):
    """``trace_context`` round-trips through every insert and every read of a task."""

    @pytest.mark.asyncio
    async def test_root_task_trace_context_round_trips(self, backend: Backend) -> None:
        new = await dispatch(backend, trace_context=TRACEPARENT)
        assert (await stored_task(backend, new.root.id)).trace_context == TRACEPARENT
        claimed = await claim_only(backend, new.root.id)
        assert claimed.trace_context == TRACEPARENT

    @pytest.mark.asyncio
    async def test_trace_context_defaults_to_none(self, backend: Backend) -> None:
        new, root = await start(backend)
        assert root.trace_context is None
        step = new_task(parent_id=root.id, parent_attempt=root.attempt, seq=0)
        row, _ = await backend.create_step(root.id, root.fence, step, at(1))
        assert row.trace_context is None
        assert (await stored_task(backend, new.root.id)).trace_context is None

    @pytest.mark.asyncio
    async def test_step_trace_context_round_trips(self, backend: Backend) -> None:
        _, root = await start(backend)
        one = new_task(parent_id=root.id, parent_attempt=root.attempt, seq=0,
                       trace_context=TRACEPARENT)
        row, _ = await backend.create_step(root.id, root.fence, one, at(1))
        assert row.trace_context == TRACEPARENT
        batch = [
            new_task(parent_id=root.id, parent_attempt=root.attempt, seq=1,
                     trace_context=OTHER_TRACEPARENT),
            new_task(parent_id=root.id, parent_attempt=root.attempt, seq=2),
        ]
        got = await backend.create_steps(root.id, root.fence, batch, at(1))
        assert [r.trace_context for r, _ in got] == [OTHER_TRACEPARENT, None]
        assert (await stored_task(backend, one.id)).trace_context == TRACEPARENT
        assert (await stored_task(backend, batch[0].id)).trace_context == OTHER_TRACEPARENT
        claimed = await backend.claim("w", claim_filter(), 10, at(2), at(60))
        assert {t.id: t.trace_context for t in claimed} == {
            one.id: TRACEPARENT, batch[0].id: OTHER_TRACEPARENT, batch[1].id: None,
        }

    @pytest.mark.asyncio
    async def test_signal_wait_trace_context_round_trips(self, backend: Backend) -> None:
        _, root = await start(backend)
        wait = signal_step(root, 0, timeout_at=at(5), trace_context=TRACEPARENT)
        row, _ = await backend.create_signal_wait(root.id, root.fence, wait, "n", at(1))
        assert row.trace_context == TRACEPARENT
        claimed = await claim_only(backend, wait.id, now=at(6))
        assert claimed.trace_context == TRACEPARENT

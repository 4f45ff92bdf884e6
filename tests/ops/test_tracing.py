"""OpenTelemetry tracing: a ``stent.dispatch`` span per dispatch and a ``stent.step`` span per
task run, joined into one trace per execution through the ``traceparent`` stored on every
task (in this process here; across processes in ``test_tracing_processes``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from stent import Result, Stent
from stent.backend import Backend
from stent.tracing import Tracing

from ..engine.helpers import start_worker, stop_worker
from . import traced_workflows as wf

#: the in-memory backend and SQLite (the one the cross-process test uses)
on_backends = pytest.mark.parametrize("stent_backend_kind", ["memory", "sqlite"])


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    yield tp
    tp.shutdown()


async def spans_when(exporter: InMemorySpanExporter, count: int,
                     timeout: float = 10) -> list[ReadableSpan]:
    """The finished spans once there are ``count`` (a task's span ends just after its
    outcome is handed to waiters)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(exporter.get_finished_spans()) < count:
        assert loop.time() < deadline, [s.name for s in exporter.get_finished_spans()]
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # nothing more is coming
    return list(exporter.get_finished_spans())


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


async def run_traced(backend: Backend, provider: TracerProvider, fn: Any, *args: Any) -> str:
    ex = Stent(backend, tracer_provider=provider)
    w = await start_worker(ex, poll_interval=0.05)
    try:
        eid = await ex.dispatch(fn, *args)
        await asyncio.wait_for(ex.wait_for(eid), 20)
    finally:
        await stop_worker(ex, w)
    return eid


@on_backends
async def test_dispatch_root_and_steps_form_one_trace_with_parent_links(
    stent_backend: Backend, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ex = Stent(stent_backend, tracer_provider=provider)
    w = await start_worker(ex, poll_interval=0.05)
    eid = await ex.dispatch(wf.two_steps, 1)
    assert await asyncio.wait_for(ex.wait_for(eid), 20) == Result.Ok(3)
    spans = await spans_when(exporter, 4)
    await stop_worker(ex, w)

    dispatch = one(spans, "stent.dispatch ops.two_steps")
    root = one(spans, "stent.step ops.two_steps")
    inline = one(spans, "stent.step ops.add")  # run on its caller's worker before it is written
    claimed = one(spans, "stent.step ops.capped_add")  # written first, claimed from storage
    assert len(spans) == 4
    assert {trace_id(s) for s in spans} == {trace_id(dispatch)}
    assert dispatch.parent is None
    assert parent_id(root) == span_id(dispatch)
    assert parent_id(inline) == span_id(root)
    assert parent_id(claimed) == span_id(root)
    assert dispatch.attributes == {"stent.execution_id": eid, "stent.task_id": eid,
                                   "stent.function": "ops.two_steps"}
    assert root.attributes == {"stent.execution_id": eid, "stent.task_id": eid,
                               "stent.attempt": 1, "stent.function": "ops.two_steps"}
    tasks = {t.step_name: t for t in await stent_backend.list_tasks_for_execution(eid)}
    for span, name in ((inline, "ops.add"), (claimed, "ops.capped_add")):
        assert span.attributes == {"stent.execution_id": eid, "stent.task_id": tasks[name].id,
                                   "stent.attempt": 1, "stent.function": name}
        assert span.status.status_code == StatusCode.UNSET
    # what each task stores is the traceparent of the span that created it
    # (version 00, then trace id, span id and flags)
    assert (tasks["ops.two_steps"].trace_context or "").startswith(
        f"00-{trace_id(dispatch):032x}-{span_id(dispatch):016x}-")
    assert (tasks["ops.add"].trace_context or "").startswith(
        f"00-{trace_id(root):032x}-{span_id(root):016x}-")


@on_backends
async def test_a_failing_step_span_has_error_status_at_every_attempt(
    stent_backend: Backend, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    eid = await run_traced(stent_backend, provider, wf.fails_then_dead, "x")
    spans = await spans_when(exporter, 4)
    steps = sorted((s for s in spans if s.name == "stent.step ops.always_fails"),
                   key=lambda s: s.attributes["stent.attempt"])  # type: ignore[index]
    assert [s.attributes["stent.attempt"] for s in steps] == [1, 2]  # type: ignore[index]
    for s in steps:
        assert s.status.status_code == StatusCode.ERROR
        assert s.status.description == "ValueError"  # the type, never the message
        assert s.attributes["stent.error_type"] == "ValueError"  # type: ignore[index]
    assert steps[0].attributes["stent.retrying"] is True  # type: ignore[index]
    assert steps[1].attributes["stent.retrying"] is False  # type: ignore[index]
    root = one(spans, "stent.step ops.fails_then_dead")
    assert root.status.status_code == StatusCode.ERROR  # the workflow failed with its step
    assert one(spans, "stent.dispatch ops.fails_then_dead").status.status_code == StatusCode.UNSET
    assert all(s.attributes["stent.execution_id"] == eid for s in spans)  # type: ignore[index]


@on_backends
async def test_no_span_holds_argument_values_or_error_messages(
    stent_backend: Backend, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    await run_traced(stent_backend, provider, wf.echo_flow, canary)
    await run_traced(stent_backend, provider, wf.fails_then_dead, canary)
    spans = await spans_when(exporter, 7)
    for s in spans:
        texts = [s.name, str(s.status.description)]
        texts += [str(v) for v in (s.attributes or {}).values()]
        texts += [e.name for e in s.events]
        texts += [str(v) for e in s.events for v in (e.attributes or {}).values()]
        assert not any(canary in t for t in texts), s.to_json()


@on_backends
async def test_call_and_wait_makes_a_dispatch_span_covering_the_call(
    stent_backend: Backend, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ex = Stent.use(stent_backend, tracer_provider=provider)
    w = await start_worker(ex, poll_interval=0.05)
    try:
        assert await asyncio.wait_for(wf.two_steps(5), 20) == 7
        with pytest.raises(ValueError):
            await asyncio.wait_for(wf.fails_then_dead("y"), 20)
    finally:
        Stent.reset()
        await stop_worker(ex, w)
    spans = await spans_when(exporter, 4 + 4)
    ok = one(spans, "stent.dispatch ops.two_steps")
    assert one(spans, "stent.step ops.two_steps").parent.span_id == span_id(ok)  # type: ignore[union-attr]
    assert ok.end_time >= one(spans, "stent.step ops.two_steps").end_time  # type: ignore[operator]
    failed = one(spans, "stent.dispatch ops.fails_then_dead")
    assert failed.status.status_code == StatusCode.ERROR


@on_backends
async def test_a_reused_execution_id_dispatch_span_names_the_existing_execution(
    stent_backend: Backend, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ex = Stent(stent_backend, tracer_provider=provider)
    await ex.dispatch(wf.add, 1, 2, idempotency_key="k-1")
    eid = await ex.dispatch(wf.add, 1, 2, idempotency_key="k-1")
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    assert spans[1].attributes["stent.execution_id"] == eid  # type: ignore[index]
    assert spans[1].attributes["stent.existing_execution"] is True  # type: ignore[index]
    await ex.shutdown()


@on_backends
async def test_without_a_provider_or_sdk_nothing_is_traced_or_stored(
    stent_backend: Backend
) -> None:
    # opentelemetry-api is installed but nobody configured a provider: the global one is a
    # no-op, and no traceparent is stored
    ex = Stent(stent_backend)
    w = await start_worker(ex, poll_interval=0.05)
    eid = await ex.dispatch(wf.two_steps, 1)
    assert await asyncio.wait_for(ex.wait_for(eid), 20) == Result.Ok(3)
    await stop_worker(ex, w)
    tasks = await stent_backend.list_tasks_for_execution(eid)
    assert len(tasks) == 3
    assert all(t.trace_context is None for t in tasks)


@on_backends
async def test_a_process_that_makes_no_spans_hands_the_trace_context_on(
    stent_backend: Backend, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # dispatched with tracing, run by a worker whose executor makes no spans (no provider
    # given, none configured globally): the steps it creates carry the dispatch's trace on
    dispatcher = Stent(stent_backend, tracer_provider=provider)
    eid = await dispatcher.dispatch(wf.two_steps, 1)
    [dispatch] = exporter.get_finished_spans()
    ex = Stent(stent_backend)
    assert not ex.tracing.enabled
    w = await start_worker(ex, poll_interval=0.05)
    assert await asyncio.wait_for(ex.wait_for(eid), 20) == Result.Ok(3)
    await stop_worker(ex, w)
    await dispatcher.shutdown()
    assert len(exporter.get_finished_spans()) == 1
    tasks = await stent_backend.list_tasks_for_execution(eid)
    assert len(tasks) == 3
    assert {(t.trace_context or "").rsplit("-", 1)[0] for t in tasks} == {
        f"00-{trace_id(dispatch):032x}-{span_id(dispatch):016x}"}


def test_tracing_without_opentelemetry_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    from stent import tracing

    monkeypatch.setattr(tracing, "OTEL_AVAILABLE", False)
    off = Tracing(None)
    assert not off.enabled
    assert off.current_traceparent() is None
    with pytest.raises(ImportError, match=r"stent-core\[tracing\]"):
        Tracing(TracerProvider())


def test_stent_runs_workflows_when_opentelemetry_cannot_be_imported() -> None:
    script = textwrap.dedent("""
        import asyncio, sys
        sys.modules["opentelemetry"] = None  # import opentelemetry -> ImportError
        from stent import Stent
        from stent_testing.memory import InMemoryBackend

        @Stent.durable(name="noot.add")
        async def add(a, b):
            return a + b

        @Stent.durable(name="noot.flow")
        async def flow(x):
            return await add(await add(x, 1), 1)

        async def main():
            backend = InMemoryBackend()
            async with Stent.bootstrap(backend, serve=True, poll_interval=0.05) as ex:
                assert not ex.tracing.enabled
                eid = await ex.dispatch(flow, 1)
                print((await ex.wait_for(eid, expiry=20)).value)
                tasks = await backend.list_tasks_for_execution(eid)
                assert all(t.trace_context is None for t in tasks)
            assert "opentelemetry.trace" not in sys.modules

        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"

"""Durable functions for the tracing and logging tests.

Imported by the tests (as ``tests.ops.traced_workflows``) and by ``stent worker``
subprocesses (as ``traced_workflows``, from this directory): every function has an explicit
``name=`` so that both register the same names.

In a subprocess started with ``$STENT_TEST_SPAN_FILE`` set, importing this module installs a
global OpenTelemetry tracer provider that appends every ended span to that file as a JSON
line: the worker (``Stent(tracer_provider=None)``) then traces through the global provider.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from stent import RetryPolicy, Stent

SPAN_FILE_ENV = "STENT_TEST_SPAN_FILE"

#: attempts made so far by ``flaky``, by key (in this process)
flaky_calls: dict[str, int] = {}


@Stent.durable(name="ops.add")
async def add(a: int, b: int) -> int:
    """An ordinary step (runs inline, on its caller's worker)."""
    return a + b


@Stent.durable(name="ops.capped_add", max_concurrent=5)
async def capped_add(a: int, b: int) -> int:
    """A step with a concurrency cap: it goes through storage and is claimed."""
    return a + b


@Stent.durable(name="ops.two_steps")
async def two_steps(x: int) -> int:
    """A workflow of two steps: one inline, one claimed from storage."""
    y = await add(x, 1)
    return await capped_add(y, 1)


@Stent.durable(name="ops.echo")
async def echo(text: str) -> str:
    """Returns its argument."""
    return text


@Stent.durable(name="ops.echo_flow")
async def echo_flow(text: str) -> str:
    """A workflow passing its argument to a step."""
    return await echo(text)


@Stent.durable(name="ops.always_fails",
               retry_policy=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0))
async def always_fails(text: str) -> None:
    """Fails every time (its message quotes its argument): two attempts, a dead letter."""
    raise ValueError(f"refusing {text}")


@Stent.durable(name="ops.fails_then_dead",
               retry_policy=RetryPolicy(max_attempts=1))
async def fails_then_dead(text: str) -> None:
    """A workflow whose step is dead-lettered; it fails too."""
    await always_fails(text)


@Stent.durable(name="ops.flaky",
               retry_policy=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0))
async def flaky(key: str, text: str) -> str:
    """Fails its first attempt (quoting its argument), succeeds the second."""
    flaky_calls[key] = flaky_calls.get(key, 0) + 1
    if flaky_calls[key] == 1:
        raise RuntimeError(f"first attempt fails for {text}")
    return "ok"


@Stent.durable(name="ops.unstorable", retry_policy=RetryPolicy(max_attempts=1))
async def unstorable(text: str) -> dict[str, object]:
    """Returns what JSON refuses, under a key quoting its argument: a dead letter whose
    reason names the key."""
    return {text: object()}


@Stent.durable(name="ops.mixed")
async def mixed(key: str, text: str) -> list[str]:
    """A retried step, a dead-lettered step and an unstorable result, all caught."""
    out = [await flaky(key, text)]
    for call in (always_fails, unstorable):
        try:
            await call(text)
        except Exception as exc:
            out.append(type(exc).__name__)
    return out


def _install_file_exporter(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(path, "a", encoding="utf-8") as f:
                for span in spans:
                    f.write(json.dumps(span_dict(span)) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


def span_dict(span: Any) -> dict[str, Any]:
    """A finished SDK span as JSON-able data (ids in hex)."""
    return {
        "name": span.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "pid": os.getpid(),
    }


if os.environ.get(SPAN_FILE_ENV):
    _install_file_exporter(os.environ[SPAN_FILE_ENV])

"""One trace across processes: this process dispatches (its ``stent.dispatch`` span), a
``stent worker`` subprocess on the same SQLite file runs the workflow and its steps, and the
worker's spans (exported to a file through the global tracer provider) continue the
dispatching span's trace through the ``traceparent`` stored on each task."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from stent import Result, Stent
from stent_postgres import SQLiteBackend

from . import traced_workflows as wf

HERE = Path(__file__).parent


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_worker_process_continues_the_dispatching_processs_trace(tmp_path: Path) -> None:
    db = tmp_path / "stent.sqlite"
    span_file = tmp_path / "spans.jsonl"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def dispatch() -> str:
        backend = SQLiteBackend(str(db))
        await backend.init_db()
        ex = Stent(backend, tracer_provider=provider)
        try:
            return await ex.dispatch(wf.two_steps, 1)
        finally:
            await ex.shutdown()
            await backend.close()

    eid = asyncio.run(dispatch())
    env = {k: v for k, v in os.environ.items()
           if k not in ("STENT_DATABASE_URL", "DATABASE_URL", "STENT_SCHEMA")}
    env[wf.SPAN_FILE_ENV] = str(span_file)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "stent.cli", "worker", "traced_workflows",
             "--db", f"sqlite:///{db}", "--worker-id", "w-traced", "--poll-interval", "0.05"],
            cwd=HERE, stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while len(_spans(span_file)) < 3:
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{_spans(span_file)}\n{log.read_text()}"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    async def result() -> Result[Any]:
        backend = SQLiteBackend(str(db))
        try:
            return await Stent(backend).result_of(eid)
        finally:
            await backend.close()

    assert asyncio.run(result()) == Result.Ok(3)
    [dispatch_span] = exporter.get_finished_spans()
    assert dispatch_span.name == "stent.dispatch ops.two_steps"
    assert dispatch_span.context is not None
    trace_id = f"{dispatch_span.context.trace_id:032x}"
    spans = {s["name"]: s for s in _spans(span_file)}
    assert set(spans) == {"stent.step ops.two_steps", "stent.step ops.add",
                          "stent.step ops.capped_add"}
    root = spans["stent.step ops.two_steps"]
    assert all(s["pid"] == worker.pid for s in spans.values())  # all run by the worker
    assert {s["trace_id"] for s in spans.values()} == {trace_id}
    assert root["parent_span_id"] == f"{dispatch_span.context.span_id:016x}"
    assert spans["stent.step ops.add"]["parent_span_id"] == root["span_id"]
    assert spans["stent.step ops.capped_add"]["parent_span_id"] == root["span_id"]
    assert all(s["attributes"]["stent.execution_id"] == eid for s in spans.values())
    assert all(s["status"] == "UNSET" for s in spans.values())
    provider.shutdown()

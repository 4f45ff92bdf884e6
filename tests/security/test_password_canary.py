"""A unique password canary in the PostgreSQL DSN never shows up anywhere: logs (every logger at
DEBUG), error messages, reprs and tracebacks (chained causes included), Prometheus metrics
(in process and from the worker's ``/metrics`` endpoint), span attributes and events, worker
status, or the output of the ``stent`` command (``uv run stent ...``).

``tests/cli/test_password_canary.py`` already runs every ``stent`` command against an
unreachable server and checks usage errors and percent-encoded passwords; this file adds the
library side (in process), a *working* connection whose DSN carries a password (the test
server's trust authentication accepts any), and the command line on that working connection
(successful output, ``--json``, not-found errors and ``STENT_DEBUG=1`` tracebacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import traceback
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from stent import Stent
from stent.metrics import PrometheusMetrics
from stent_postgres import PostgresBackend
from stent_testing.pg import create_test_backend, dispose_test_backend, require_postgres

from .workflows import fails, healthy

CANARY = f"Cnry{uuid.uuid4().hex[:20]}"
#: nothing listens on port 1
UNREACHABLE = f"postgresql://postgres:{CANARY}@127.0.0.1:1/test"


def canary_dsn(base: str) -> str:
    """``base`` (the test server) with the canary as its password."""
    parts = urlsplit(base)
    user = parts.username or "postgres"
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{CANARY}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def assert_clean(text: str, where: str) -> None:
    for form in {CANARY, quote(CANARY, safe=""), CANARY.lower(), CANARY.upper()}:
        assert form not in text, f"the password shows in {where}:\n{text[:3000]}"


def exception_text(exc: BaseException) -> str:
    """Everything an exception shows: str, repr, args, the traceback with every chained
    cause, and the attributes it carries."""
    parts = [str(exc), repr(exc), repr(exc.args),
             "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current)]
        with contextlib.suppress(Exception):
            parts.append(repr(vars(current)))
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


class Evidence:
    """Everything the test saw, checked at the end."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: object) -> None:
        self.texts.append((where, text if isinstance(text, str) else repr(text)))

    async def error(self, where: str, coro: Any) -> BaseException | None:
        try:
            await coro
        except Exception as exc:
            self.add(f"the error of {where}", exception_text(exc))
            return exc
        return None

    def check(self) -> None:
        assert self.texts
        for where, text in self.texts:
            assert_clean(text, where)


@pytest.fixture
def tracing() -> Iterable[tuple[Any, Any]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def span_text(exporter: Any) -> str:
    out = []
    for span in exporter.get_finished_spans():
        out.append(span.name)
        out.append(repr(dict(span.attributes or {})))
        out.append(repr(span.status.description))
        for event in span.events:
            out.append(event.name + repr(dict(event.attributes or {})))
        out.append(repr(dict(span.resource.attributes)))
    return "\n".join(out)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("asyncpg", "stent", "stent_postgres", "stent.worker", "stent.runner"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    return caplog


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """The log records as formatted, with their arguments, exception text and extras."""
    out = [caplog.text]
    for record in caplog.records:
        out.append(record.getMessage())
        out.append(repr(record.args))
        out.append(repr({k: v for k, v in vars(record).items()
                         if k not in ("msg", "args", "exc_info")}))
        if record.exc_info and record.exc_info[1] is not None:
            out.append(exception_text(record.exc_info[1]))
    return "\n".join(out)


def test_the_check_sees_a_leak() -> None:
    for leak in (CANARY, quote(CANARY, safe=""), f"postgresql://u:{CANARY}@h/db"):
        with pytest.raises(AssertionError):
            assert_clean(f"connecting to {leak} failed", "a self-test")
    assert CANARY in UNREACHABLE


async def test_unreachable_server_never_shows_the_password(
    debug_logs: pytest.LogCaptureFixture, tracing: tuple[Any, Any],
) -> None:
    provider, exporter = tracing
    seen = Evidence()
    backend = PostgresBackend(UNREACHABLE, min_pool_size=1, max_pool_size=1, connect_timeout=2)
    seen.add("repr(backend)", repr(backend))
    seen.add("str(backend)", str(backend))
    seen.add("backend.masked_dsn", backend.masked_dsn)
    for name, call in [("init_db", backend.init_db()), ("get_execution", backend.get_execution("x")),
                       ("count_tasks", backend.count_tasks()),
                       ("list_executions", backend.list_executions(limit=1, offset=0,
                                                                   state=None))]:
        assert await seen.error(name, call) is not None, f"{name} did not fail"
    metrics = PrometheusMetrics()
    ex = Stent(backend, metrics=metrics, tracer_provider=provider)
    seen.add("repr(executor notifications)", repr(ex.notifications_backend))
    assert await seen.error("dispatch", ex.dispatch(healthy, 1)) is not None
    assert await seen.error("state_of", ex.state_of("x")) is not None
    assert await seen.error("send_signal", ex.send_signal("x", "go", 1)) is not None
    assert await seen.error("bootstrap", _bootstrap(backend)) is not None
    # a worker on an unreachable database keeps retrying (and logging) without ending
    worker = asyncio.get_running_loop().create_task(ex.serve(poll_interval=0.1, health_port=0))
    await asyncio.sleep(3)
    assert not worker.done(), worker.exception() if worker.done() else None
    for server in ex.health_servers:
        seen.add("/metrics", await _get(server.port, "/metrics"))
        seen.add("/ready", await _get(server.port, "/ready"))
    seen.add("worker_status_overview()", json.dumps(ex.worker_status_overview(), default=str))
    worker.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(worker, 10)
    await ex.shutdown()
    await backend.close()
    seen.add("Prometheus text", metrics.render())
    seen.add("spans", span_text(exporter))
    seen.add("logs", log_text(debug_logs))
    assert "127.0.0.1:1" in log_text(debug_logs) + "".join(t for _, t in seen.texts)
    seen.check()


@pytest.mark.parametrize("dsn", [
    f"postgresql+asyncpg://postgres:{CANARY}@127.0.0.1:1/test",  # SQLAlchemy-style URL
    f"postgres+psycopg://postgres:{CANARY}@127.0.0.1:1/test",
    f"mysql://postgres:{CANARY}@127.0.0.1:1/test",
    f"POSTGRESQL://postgres:{CANARY}@127.0.0.1:1/test",
    f"postgresql://postgres@127.0.0.1:1/test?password={CANARY}",
    f"host=127.0.0.1 port=1 user=postgres password={CANARY}",
    f"postgresql://postgres:{CANARY}@127.0.0.1:1/test?sslmode=sometimes",
], ids=["sqlalchemy-asyncpg", "sqlalchemy-psycopg", "mysql", "upper-case", "query-password",
        "key-value", "bad-sslmode"])
async def test_any_dsn_form_is_masked(dsn: str, debug_logs: pytest.LogCaptureFixture) -> None:
    """Whatever the DSN looks like, a ``PostgresBackend`` made from it never shows its
    password: not in its repr, not in the error of a failed connection."""
    seen = Evidence()
    try:
        backend = PostgresBackend(dsn, min_pool_size=1, max_pool_size=1, connect_timeout=2)
    except ValueError as exc:  # refusing the DSN outright is fine, if the refusal is clean
        seen.add("the constructor's error", exception_text(exc))
    else:
        seen.add("repr(backend)", repr(backend))
        seen.add("backend.masked_dsn", backend.masked_dsn)
        assert await seen.error("init_db", backend.init_db()) is not None
        await backend.close()
    seen.add("logs", log_text(debug_logs))
    seen.check()


async def _bootstrap(backend: PostgresBackend) -> None:
    async with Stent.bootstrap(backend, serve=True):
        pass


async def _get(port: int, path: str) -> str:
    def fetch() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return str(r.read().decode())
        except urllib.error.HTTPError as exc:
            return f"{exc.code} {exc.read().decode()}"

    return await asyncio.to_thread(fetch)


@pytest.fixture
async def canary_backend() -> AsyncIterator[PostgresBackend]:
    """A backend on the test server whose DSN carries the canary as password."""
    base = await require_postgres()
    backend = await create_test_backend(canary_dsn(base), min_pool_size=1, max_pool_size=4)
    try:
        yield backend
    finally:
        await dispose_test_backend(backend)


async def test_working_connection_never_shows_the_password(
    canary_backend: PostgresBackend, debug_logs: pytest.LogCaptureFixture,
    tracing: tuple[Any, Any],
) -> None:
    provider, exporter = tracing
    backend = canary_backend
    assert CANARY in backend.dsn  # the DSN really carries it
    seen = Evidence()
    metrics = PrometheusMetrics()
    ex = Stent(backend, metrics=metrics, tracer_provider=provider)
    worker = asyncio.get_running_loop().create_task(
        ex.serve(poll_interval=0.05, health_port=0))
    try:
        await asyncio.wait_for(ex.wait_until_ready(), 15)
        ok = await ex.dispatch(healthy, 1)
        bad = await ex.dispatch(fails)
        assert (await asyncio.wait_for(ex.wait_for(ok), 30)).unwrap() == 2
        failed = await asyncio.wait_for(ex.wait_for(bad), 60)
        seen.add("a failed execution's error", exception_text(failed.error))  # type: ignore[arg-type]
        for eid in (ok, bad):
            seen.add("state_of", repr(await ex.state_of(eid)))
            seen.add("history", json.dumps(await ex.history(eid), default=str))
        seen.add("dead letters", repr(await ex.list_dead_letters()))
        await seen.error("state_of(unknown)", ex.state_of("no-such"))
        await seen.error("send_signal(unknown)", ex.send_signal("no-such", "go", 1))
        # a query that fails on the server (no tables in this schema) names the masked DSN
        empty = PostgresBackend(backend.dsn, schema="stent_t_nothing_here", min_pool_size=1,
                                max_pool_size=1)
        err = await seen.error("a query on a schema without tables",
                               empty.get_execution("x"))
        assert err is not None and "***" in str(err), err
        await empty.close()
        for server in ex.health_servers:
            seen.add("/metrics", await _get(server.port, "/metrics"))
        seen.add("worker_status_overview()", json.dumps(ex.worker_status_overview(), default=str))
        seen.add("repr(backend)", repr(backend))
        seen.add("repr(notifications)", repr(ex.notifications_backend))
        cli = await _cli_outputs(backend, ok, bad)
    finally:
        worker.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(worker, 10)
        await ex.shutdown()
    for where, text in cli:
        seen.add(where, text)
    seen.add("Prometheus text", metrics.render())
    seen.add("spans", span_text(exporter))
    assert exporter.get_finished_spans(), "tracing recorded nothing: the check would be empty"
    seen.add("logs", log_text(debug_logs))
    seen.check()


def _stent_command() -> list[str]:
    """``uv run stent`` (without syncing the environment) when uv is there."""
    uv = shutil.which("uv")
    if uv is not None:
        return [uv, "run", "--no-sync", "stent"]
    return [sys.executable, "-m", "stent.cli"]


async def _cli_outputs(backend: PostgresBackend, ok: str, bad: str) -> list[tuple[str, str]]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("STENT_DATABASE_URL", "DATABASE_URL", "STENT_SCHEMA")}
    db = ["--db", backend.dsn, "--schema", backend.schema]
    runs: list[tuple[list[str], dict[str, str], set[int]]] = [
        (["list", *db], env, {0}),
        (["list", *db, "--json"], env, {0}),
        (["show", ok, *db], env, {0}),
        (["show", bad, *db, "--json"], env, {0}),
        (["show", "no-such-execution", *db], env, {1}),
        (["tasks", "list", bad, *db], env, {0}),
        (["stats", *db, "--json"], env, {0}),
        (["dlq", "list", *db], env, {0}),
        (["history", "export", ok, *db], env, {0}),
        (["list"], {**env, "STENT_DATABASE_URL": backend.dsn, "STENT_SCHEMA": backend.schema},
         {0}),
        (["list", "--db", UNREACHABLE], {**env, "STENT_DEBUG": "1"}, {1}),
        (["show", "x", "--db", backend.dsn, "--schema", "stent_t_nothing_here"],
         {**env, "STENT_DEBUG": "1"}, {1}),
    ]
    outputs = []
    for argv, run_env, codes in runs:
        proc = await asyncio.create_subprocess_exec(
            *_stent_command(), *argv, env=run_env, cwd=os.getcwd(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        text = out.decode(errors="replace") + err.decode(errors="replace")
        shown = " ".join("<dsn>" if a == backend.dsn else a for a in argv)
        assert proc.returncode in codes, f"stent {shown} exited {proc.returncode}: {text}"
        outputs.append((f"the output of stent {shown}", text))
    return outputs

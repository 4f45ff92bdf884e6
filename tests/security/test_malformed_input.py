"""Malformed input, one data-driven table run on both SQL backends (SQLite and PostgreSQL).

Every case either raises a typed error naming the bad value (``error``), ends its execution
with a dead-letter entry giving a reason (``dead_letter``), is stored and read back exactly
(``ok``), or is left alone by workers that cannot run it (``unclaimed``). Then, for every
case:

* errors raised before anything is written leave the row count of every table unchanged;
* a dead-lettered task took a bounded number of attempts and nothing of its execution is
  left pending or running (no endless retry);
* the worker did not die: it still runs a normal workflow to completion.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from stent import (
    BackendError,
    ExecutionNotFound,
    IdempotencyConflictError,
    PayloadTooLargeError,
    RetryPolicy,
    SchemaVersionError,
    SerializationError,
    Stent,
    UnregisteredFunctionError,
)
from stent.backend import Backend
from stent.serialization import decode_error

from .rawdb import RawDB, diff_counts
from .workflows import TWICE, echo, fails, healthy


# -- durable functions of the table ---------------------------------------------------------------
@Stent.durable(name="security:returns_object")
async def returns_object() -> Any:
    return {"conn": object()}


@Stent.durable(name="security:returns_nan")
async def returns_nan() -> float:
    return math.nan


@Stent.durable(name="security:returns_surrogate")
async def returns_surrogate() -> str:
    return "bad \udcff text"


@Stent.durable(name="security:returns_too_much")
async def returns_too_much() -> str:
    return "x" * (2 * 1024 * 1024 + 1)


@Stent.durable(name="security:sleeps", retry_policy=TWICE)
async def sleeps(duration: Any) -> None:
    await Stent.sleep(_duration(duration))


def _duration(spec: Any) -> Any:
    # NaN and infinities cannot be stored as arguments (JSON refuses them): passed by name
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(spec, spec) \
        if isinstance(spec, str) else spec


@Stent.durable(name="security:counts", retry_policy=TWICE)
async def counts(name: str, by: Any = 1) -> None:
    await Stent.context().increment(name, by)


@Stent.durable(name="security:sets_state", retry_policy=TWICE)
async def sets_state(key: str) -> None:
    await Stent.context().set_state(key, 1)


@Stent.durable(name="security:waits_for", retry_policy=TWICE)
async def waits_for(name: str, timeout: Any = None) -> Any:
    return await Stent.wait_for_signal(name, timeout=_duration(timeout))


@Stent.durable(name="security:passes_a_socket", retry_policy=TWICE)
async def passes_a_socket() -> Any:
    return await echo(1, {"conn": object()})


@Stent.durable(name="security:passes_deep", retry_policy=TWICE)
async def passes_deep() -> Any:
    return await echo(_nested(10_000))


@Stent.durable(name="security:keyed", idempotent=True,
               idempotency_key_func=lambda order: order)
async def keyed(order: Any) -> str:
    return f"charged {order}"


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _cycle() -> list[Any]:
    a: list[Any] = []
    a.append(a)
    return a


async def _nothing() -> None:
    return None


# -- the case objects ----------------------------------------------------------------------------
@dataclass
class Env:
    """What a case acts on: the executor (no worker yet, unless started), its backend, SQL."""

    kind: str
    ex: Stent
    backend: Backend
    raw: RawDB
    tmp_path: Path
    start: Callable[..., Awaitable[asyncio.Task[None]]]
    worker: asyncio.Task[None] | None = None
    state: dict[str, Any] = field(default_factory=dict)

    async def ensure_worker(self) -> asyncio.Task[None]:
        if self.worker is None:
            self.worker = await self.start(self.ex)
        return self.worker

    async def root(self, eid: str) -> str:
        ex = await self.backend.get_execution(eid)
        assert ex is not None
        return ex.root_task_id


Act = Callable[[Env], Awaitable[Any]]


@dataclass(frozen=True)
class Case:
    """One row of the table.

    Attributes:
        id: the test id.
        act: what the case does; for ``dead_letter``/``unclaimed`` it returns the execution id.
        expect: ``error``, ``dead_letter``, ``ok``, ``unclaimed`` or ``finishes`` (ends one
            way or the other, the worker unharmed).
        error: the typed error expected (``error`` cases).
        names: texts the error (or the dead-lettered error) must contain.
        reason: text the dead-letter reason must contain.
        attempts: the most attempts the dead-lettered task may take.
        setup: runs before the row counts are taken (its writes are legitimate).
        absent: texts the error must not contain (a password).
        cleanup: runs after the case, before the worker is checked.
    """

    id: str
    act: Act
    expect: str = "error"
    error: type[BaseException] | tuple[type[BaseException], ...] = ()
    names: tuple[str, ...] = ()
    reason: str = ""
    attempts: int = 1
    setup: Act | None = None
    cleanup: Act | None = None
    absent: tuple[str, ...] = ()


def dispatch(fn: Any, *args: Any, **kw: Any) -> Act:
    return lambda env: env.ex.dispatch(fn, *args, **kw)


def err(id: str, act: Act, error: Any, *names: str, **kw: Any) -> Case:
    return Case(id, act, "error", error, names, **kw)


def dead(id: str, act: Act, reason: str, *names: str, attempts: int = 1, **kw: Any) -> Case:
    return Case(id, act, "dead_letter", names=names, reason=reason, attempts=attempts, **kw)


def decorate(**options: Any) -> Act:
    async def act(env: Env) -> None:
        async def fn() -> None:
            return None

        Stent.durable(name="security:decorated", registry=_scratch_registry(), **options)(fn)

    return act


def _scratch_registry() -> Any:
    from stent import FunctionRegistry

    return FunctionRegistry()


def retry_policy(**kw: Any) -> Act:
    async def act(env: Env) -> None:
        RetryPolicy(**kw)

    return act


async def _started(env: Env) -> None:
    env.state["eid"] = await env.ex.dispatch(echo, 1, execution_id="first")


def on_started(call: Callable[[Env, str], Awaitable[Any]]) -> Act:
    return lambda env: call(env, env.state["eid"])


# tampering with stored rows ---------------------------------------------------------------------
def tampered(column: str, value: Any, fn: Any = echo, *args: Any, table: str = "stent_tasks",
             key: str = "id") -> Act:
    """Dispatch ``fn(*args)`` (no worker runs yet), then overwrite ``column`` of its root task
    (or its execution row) straight in the database."""

    async def act(env: Env) -> str:
        eid = await env.ex.dispatch(fn, *args)
        ident = await env.root(eid) if table == "stent_tasks" else eid
        await env.raw.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?",
                              _as_stored(env, column, value), ident)
        return eid

    return act


def _as_stored(env: Env, column: str, value: Any) -> Any:
    """``value`` as the column stores it: per backend when given as ``{kind: value}``; JSON
    text for a dict."""
    if isinstance(value, PerBackend):
        value = value[env.kind]
    if isinstance(value, dict):
        import json

        return json.dumps(value)
    return value


class PerBackend(dict[str, Any]):
    """A stored value that differs by backend (``{"sqlite": ..., "postgres": ...}``)."""


async def _corrupt_finished_result(env: Env) -> None:
    eid = await env.ex.dispatch(healthy, 1)
    await env.ensure_worker()
    await asyncio.wait_for(env.ex.wait_for(eid), 30)
    await env.raw.execute("UPDATE stent_executions SET result = ? WHERE id = ?",
                          b"\xff\xfe not json", eid)
    env.state["eid"] = eid


async def _corrupt_finished_error(env: Env) -> None:
    eid = await env.ex.dispatch(fails)
    await env.ensure_worker()
    await asyncio.wait_for(env.ex.wait_for(eid), 30)
    await env.raw.execute("UPDATE stent_executions SET error = ? WHERE id = ?",
                          b'{"__stent__": "error", "type": 1}', eid)
    env.state["eid"] = eid


async def _result_of_raises_typed(env: Env) -> None:
    result = await env.ex.result_of(env.state["eid"])
    # a corrupted stored error still comes back as an error, never as a value or a crash
    assert not result.ok, result
    raise SerializationError(f"stored error of {env.state['eid']} decoded as {result.error!r}")


async def _newer_schema(env: Env) -> None:
    await env.raw.execute("INSERT INTO stent_schema_version (version) VALUES (999)"
                          if env.kind == "postgres" else
                          "INSERT INTO stent_schema_version (version, applied_at) VALUES (999, 0)")


async def _older_schema(env: Env) -> None:
    await env.raw.execute("DELETE FROM stent_schema_version WHERE version = 999")


async def _init_db_again(env: Env) -> None:
    backend: Any
    if env.kind == "sqlite":
        from stent_postgres import SQLiteBackend

        backend = SQLiteBackend(env.backend.path)  # type: ignore[attr-defined]
    else:
        from stent_postgres import PostgresBackend

        backend = PostgresBackend(env.backend.dsn, schema=env.backend.schema,  # type: ignore[attr-defined]
                                  min_pool_size=1, max_pool_size=1)
    try:
        await backend.init_db()
    finally:
        await backend.close()


def postgres_dsn(dsn: str) -> Act:
    async def act(env: Env) -> None:
        from stent_postgres import PostgresBackend

        backend = PostgresBackend(dsn, min_pool_size=1, max_pool_size=1, connect_timeout=3)
        try:
            await backend.init_db()
        finally:
            await backend.close()

    return act


class UsageError(Exception):
    """``stent`` exited 2 (a usage error); the message is its stderr."""


def cli_db(url: str) -> Act:
    async def act(env: Env) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stent.cli", "list", "--db", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=_clean_env())
        out, errout = await asyncio.wait_for(proc.communicate(), 60)
        text = (out + errout).decode(errors="replace")
        assert "Traceback" not in text, text
        if proc.returncode == 2:
            raise UsageError(text)
        raise AssertionError(f"stent list --db {url!r} exited {proc.returncode}: {text}")

    return act


def _clean_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    for name in ("STENT_DATABASE_URL", "DATABASE_URL", "STENT_SCHEMA"):
        env.pop(name, None)
    return env


async def _nul_round_trip(env: Env) -> None:
    await env.ensure_worker()
    value = ("a\x00b", {"k\x00ey": "\x00"}, b"\x00\xff")
    eid = await env.ex.dispatch(echo, *value, nul="\x00")
    result = await asyncio.wait_for(env.ex.wait_for(eid), 30)
    assert result.unwrap() == [list(value), {"nul": "\x00"}]


async def _unicode_round_trip(env: Env) -> None:
    await env.ensure_worker()
    value = ["é漢字🙂", "\u202eRTL", "\ufeffBOM", "'; DROP TABLE stent_tasks; --"]
    eid = await env.ex.dispatch(echo, value)
    assert (await asyncio.wait_for(env.ex.wait_for(eid), 30)).unwrap() == [[value], {}]


async def _ghost(env: Env) -> str:
    eid = await env.ex.dispatch(echo, 1)
    await env.raw.execute("UPDATE stent_tasks SET step_name = ? WHERE id = ?",
                          "security:ghost", await env.root(eid))
    await env.raw.execute("UPDATE stent_executions SET function = ? WHERE id = ?",
                          "security:ghost", eid)
    return eid


async def _ghost_inserted(env: Env) -> str:
    """A row written through the backend directly, naming a function nobody registered."""
    from stent.steps import encode_call
    from stent_testing.conformance.builders import new_execution

    args = encode_call(env.ex, "security:ghost", (1,), {})
    new = new_execution(name="security:ghost", args=args, due_at=env.ex.clock.now())
    eid, created = await env.backend.create_execution(new, env.ex.clock.now())
    assert created
    return eid


def _ghost_kind(kind: str, name: str = "security:ghost") -> Act:
    async def act(env: Env) -> str:
        eid = await env.ex.dispatch(echo, 1)
        await env.raw.execute("UPDATE stent_tasks SET kind = ?, step_name = ? WHERE id = ?",
                              kind, name, await env.root(eid))
        return eid

    return act


BIG = "x" * 2000
#: 1,000 characters (the documented limit of keys), 3,000 bytes in UTF-8, incompressible
WIDE_KEY = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(1000))


def stored_or_refused(act: Act, *names: str) -> Act:
    """A value at the documented limit: either stored (then found again), or refused with a
    ValueError naming it before anything is written; the same on every backend."""

    async def run(env: Env) -> None:
        before = await env.raw.counts()
        try:
            first = await act(env)
        except ValueError as exc:
            for name in names:
                assert name in str(exc), exc
            assert diff_counts(before, await env.raw.counts()) == {}
            return
        assert await act(env) == first, "the same key named another execution"

    return run


async def _wide_cache_key(env: Env) -> None:
    await env.ensure_worker()
    try:
        eid = await env.ex.dispatch(keyed, WIDE_KEY)
    except ValueError as exc:
        assert "security:keyed" in str(exc)
        return
    result = await asyncio.wait_for(env.ex.wait_for(eid), 60)
    assert result.unwrap() == f"charged {WIDE_KEY}", result

async def _nul_cache_key(env: Env) -> None:
    await env.ensure_worker()
    eid = await env.ex.dispatch(keyed, "order\x00")
    result = await asyncio.wait_for(env.ex.wait_for(eid), 60)
    assert result.unwrap() == "charged order\x00", result


CASES: list[Case] = [
    # -- arguments that cannot be stored: refused at dispatch, nothing written
    err("arg-object", dispatch(echo, 1, {"conn": object()}), SerializationError,
        "args[1]['conn']", "object"),
    err("arg-nan", dispatch(echo, when=math.nan), SerializationError, "kwargs['when']", "NaN"),
    err("arg-infinity", dispatch(echo, [1, -math.inf]), SerializationError, "args[0][1]"),
    err("arg-lone-surrogate", dispatch(echo, "ok \udc80"), SerializationError,
        "args[0]", "surrogate"),
    err("arg-surrogate-key", dispatch(echo, {"\ud800": 1}), SerializationError,
        "args[0]", "surrogate"),
    err("arg-10000-deep", dispatch(echo, _nested(10_000)), SerializationError,
        "args[0][0][0]", "nested more than"),
    err("arg-cycle", dispatch(echo, _cycle()), SerializationError, "args[0]"),
    err("arg-set-of-objects", dispatch(echo, {object()}), SerializationError, "args[0]"),
    err("arg-over-max-payload",
        lambda env: Stent(env.backend, max_payload_bytes=1000).dispatch(echo, BIG),
        PayloadTooLargeError, "max_payload_bytes=1000", "security:echo"),
    err("arg-huge-int", dispatch(echo, 10 ** 5000), SerializationError, "args[0]", "digits"),
    # -- NUL and other hostile text in names and ids
    err("queue-nul", dispatch(echo, queue="a\x00b"), ValueError, "queue", r"'a\x00b'"),
    err("tag-nul", dispatch(echo, tags=["gpu\x00"]), ValueError, "tag", r"'gpu\x00'"),
    err("queue-sql", dispatch(echo, queue="q'; DROP TABLE stent_tasks; --"), ValueError,
        "queue", "DROP TABLE"),
    err("queue-too-long", dispatch(echo, queue="q" * 201), ValueError, "queue", "q" * 201),
    err("queue-empty", dispatch(echo, queue=""), ValueError, "queue", "''"),
    err("queue-unicode", dispatch(echo, queue="очередь"), ValueError, "queue", "очередь"),
    err("tag-wildcard", dispatch(echo, tags=["%"]), ValueError, "tag", "'%'"),
    err("tags-not-a-list", dispatch(echo, tags="gpu"), ValueError, "tags", "'gpu'"),
    err("execution-id-nul", dispatch(echo, 1, execution_id="order\x001"), ValueError,
        "execution_id", r"'order\x001'"),
    err("execution-id-surrogate", dispatch(echo, 1, execution_id="order\udc801"), ValueError,
        "execution_id", r"'order\udc801'"),
    err("execution-id-too-long", dispatch(echo, 1, execution_id="e" * 201), ValueError,
        "execution_id"),
    err("idempotency-key-nul", dispatch(echo, 1, idempotency_key="key\x00"), ValueError,
        "idempotency_key", r"'key\x00'"),
    err("priority-out-of-range", dispatch(echo, priority=2 ** 40), ValueError, "priority",
        str(2 ** 40)),
    err("priority-bool", dispatch(echo, priority=True), ValueError, "priority", "True"),
    err("signal-name-nul", on_started(lambda env, eid: env.ex.send_signal(eid, "go\x00", 1)),
        ValueError, "signal", r"'go\x00'", setup=_started),
    err("signal-name-sql", on_started(lambda env, eid: env.ex.send_signal(eid, "x' OR '1'='1", 1)),
        ValueError, "signal", "x' OR '1'='1", setup=_started),
    err("signal-name-space", on_started(lambda env, eid: env.ex.send_signal(eid, "go now", 1)),
        ValueError, "signal", "'go now'", setup=_started),
    err("queue-depth-hostile", lambda env: env.ex.queue_depth("a%"), ValueError, "queue", "'a%'"),
    err("list-state-hostile", lambda env: env.ex.list_executions(state="' OR 1=1 --"),
        ValueError, "' OR 1=1 --"),
    err("function-name-unknown", dispatch("security:nope"), UnregisteredFunctionError,
        "security:nope", "security:echo"),
    err("function-name-nul", dispatch("security:echo\x00"), UnregisteredFunctionError,
        r"security:echo\x00"),
    # -- signals
    err("signal-to-unknown-execution", lambda env: env.ex.send_signal("no-such-run", "go", 1),
        ExecutionNotFound, "no-such-run"),
    err("signal-payload-object",
        on_started(lambda env, eid: env.ex.send_signal(eid, "go", {"conn": object()})),
        SerializationError, "payload of signal 'go'", "['conn']", setup=_started),
    err("signal-payload-over-max",
        on_started(lambda env, eid: Stent(env.backend, max_payload_bytes=1000)
                   .send_signal(eid, "go", BIG)),
        PayloadTooLargeError, "signal 'go'", "max_payload_bytes=1000", setup=_started),
    # -- reused keys
    err("idempotency-key-other-args", dispatch(echo, 2, idempotency_key="order-7"),
        IdempotencyConflictError, "'order-7'", "other arguments",
        setup=lambda env: env.ex.dispatch(echo, 1, idempotency_key="order-7")),
    err("idempotency-key-other-function", dispatch(healthy, 1, idempotency_key="order-8"),
        IdempotencyConflictError, "'order-8'",
        setup=lambda env: env.ex.dispatch(echo, 1, idempotency_key="order-8")),
    err("execution-id-other-args", dispatch(echo, 2, execution_id="first"),
        IdempotencyConflictError, "'first'", setup=_started),
    err("idempotency-key-func-returns-int", dispatch(keyed, 5), ValueError,
        "security:keyed", "returned 5"),
    err("idempotency-key-func-returns-empty", dispatch(keyed, ""), ValueError,
        "security:keyed", "returned ''"),
    # cache keys are stored as digests, so any str a key function returns fits every backend
    Case("idempotency-key-func-returns-nul", _nul_cache_key, "ok"),
    Case("idempotency-key-1000-wide-chars",
         stored_or_refused(dispatch(echo, 1, idempotency_key=WIDE_KEY), "idempotency_key"),
         "ok"),
    Case("cache-key-1000-wide-chars", _wide_cache_key, "ok"),
    # -- durations
    err("delay-negative", dispatch(echo, delay=-1), ValueError, "-1"),
    err("delay-nan", dispatch(echo, delay=math.nan), ValueError, "nan"),
    err("delay-infinite", dispatch(echo, delay=math.inf), ValueError, "inf"),
    err("delay-negative-timedelta", dispatch(echo, delay=timedelta(seconds=-5)), ValueError,
        "days=-1", "negative"),
    err("max-duration-string-negative", dispatch(echo, max_duration="-1s"), ValueError, "'-1s'"),
    err("duration-repeated-unit", dispatch(echo, delay="1h1h"), ValueError, "'1h1h'"),
    err("duration-unknown-unit", dispatch(echo, delay="5x"), ValueError, "'5x'"),
    err("duration-two-dots", dispatch(echo, delay="1.5.5s"), ValueError, "'1.5.5s'"),
    err("duration-empty", dispatch(echo, max_duration="  "), ValueError, "'  '"),
    err("duration-words", dispatch(echo, delay="ten minutes"), ValueError, "'ten minutes'"),
    err("duration-dict-key", dispatch(echo, delay={"fortnights": 1}), ValueError, "fortnights"),
    err("duration-bool", dispatch(echo, delay=True), TypeError, "True"),
    err("wait-for-expiry-malformed",
        on_started(lambda env, eid: env.ex.wait_for(eid, expiry="soon")), ValueError, "'soon'",
        setup=_started),
    # -- decoration time
    err("retry-max-attempts-zero", retry_policy(max_attempts=0), ValueError, "max_attempts", "0"),
    err("retry-negative-delay", retry_policy(initial_delay=-1), ValueError, "initial_delay", "-1"),
    err("retry-nan-backoff", retry_policy(backoff_factor=math.nan), ValueError,
        "backoff_factor", "nan"),
    err("retry-infinite-max-delay", retry_policy(max_delay=math.inf), ValueError,
        "max_delay", "inf"),
    err("retry-jitter-above-one", retry_policy(jitter=1.5), ValueError, "jitter", "1.5"),
    err("retry-for-strings", retry_policy(retry_for=("ValueError",)), (ValueError, TypeError),
        "retry_for"),
    err("retry-policy-not-a-policy", decorate(retry_policy={"max_attempts": 3}), TypeError,
        "retry_policy"),
    err("max-concurrent-zero", decorate(max_concurrent=0), ValueError, "max_concurrent", "0"),
    err("max-concurrent-negative", decorate(max_concurrent=-3), ValueError, "max_concurrent",
        "-3"),
    err("max-concurrent-float", decorate(max_concurrent=1.5), ValueError, "max_concurrent", "1.5"),
    err("max-concurrent-str", decorate(max_concurrent="3"), ValueError, "max_concurrent", "'3'"),
    err("max-concurrent-bool", decorate(max_concurrent=True), ValueError, "max_concurrent",
        "True"),
    err("cache-ttl-words", decorate(cached=True, cache_ttl="forever"), ValueError, "'forever'"),
    err("cache-ttl-negative", decorate(cached=True, cache_ttl=-5), ValueError, "-5"),
    err("cache-ttl-nan", decorate(cached=True, cache_ttl=math.nan), ValueError, "nan"),
    err("timeout-malformed", decorate(timeout="soon"), ValueError, "'soon'"),
    err("decorator-queue-hostile", decorate(queue="a b"), ValueError, "queue", "'a b'"),
    err("decorator-tag-hostile", decorate(tags=["x;y"]), ValueError, "tag", "'x;y'"),
    # -- configuration: DSNs, serializers, schema versions
    err("dsn-unknown-scheme", postgres_dsn("mysql://stent:pw-canary@127.0.0.1/stent"),
        (ValueError, BackendError), "mysql", absent=("pw-canary",)),
    err("dsn-sqlalchemy-scheme",
        postgres_dsn("postgresql+asyncpg://stent:pw-canary@127.0.0.1/stent"),
        (ValueError, BackendError), "postgresql+asyncpg", absent=("pw-canary",)),
    err("dsn-bad-port", postgres_dsn("postgresql://stent:pw-canary@127.0.0.1:notaport/stent"),
        (ValueError, BackendError), "notaport", absent=("pw-canary",)),
    err("dsn-bad-sslmode",
        postgres_dsn("postgresql://stent:pw-canary@127.0.0.1:1/stent?sslmode=sometimes"),
        (ValueError, BackendError), "sslmode", absent=("pw-canary",)),
    err("dsn-garbage", postgres_dsn("not a dsn at all"), (ValueError, BackendError),
        "not a dsn at all"),
    err("dsn-bad-schema",
        lambda env: _raises_sync(lambda: __import__("stent_postgres").PostgresBackend(
            "postgresql://postgres@127.0.0.1/test", schema='x"; DROP SCHEMA public; --')),
        ValueError, "DROP SCHEMA"),
    err("cli-db-unknown-scheme", cli_db("mysql://stent:pw-canary@127.0.0.1/stent"), UsageError,
        "mysql", absent=("pw-canary",)),
    err("cli-db-no-scheme", cli_db("stent:pw-canary@127.0.0.1/stent"), UsageError,
        absent=("pw-canary",)),
    err("serializer-unknown", lambda env: _raises_sync(lambda: Stent(env.backend,
                                                                     serializer="yaml")),
        ValueError, "'yaml'"),
    err("max-payload-bytes-zero", lambda env: _raises_sync(lambda: Stent(env.backend,
                                                                         max_payload_bytes=0)),
        ValueError, "max_payload_bytes", "0"),
    err("schema-from-newer-version", _init_db_again, SchemaVersionError, "999",
        setup=_newer_schema, cleanup=_older_schema),
    # -- corrupted stored rows read by a client
    err("stored-result-corrupted",
        lambda env: env.ex.result_of(env.state["eid"]), SerializationError,
        setup=_corrupt_finished_result),
    err("stored-error-corrupted", _result_of_raises_typed, SerializationError,
        setup=_corrupt_finished_error),
    # -- what a task does wrong: dead-lettered with a reason, after bounded attempts
    dead("result-object", dispatch(returns_object), "unserializable result",
         "security:returns_object", "['conn']"),
    dead("result-nan", dispatch(returns_nan), "unserializable result", "NaN"),
    dead("result-lone-surrogate", dispatch(returns_surrogate), "unserializable result",
         "surrogate"),
    dead("result-over-max-payload", dispatch(returns_too_much), "unserializable result",
         "max_payload_bytes"),
    dead("sleep-negative", dispatch(sleeps, -1), "attempts exhausted", "-1", attempts=2),
    dead("sleep-nan", dispatch(sleeps, "nan"), "attempts exhausted", "nan", attempts=2),
    dead("sleep-infinite", dispatch(sleeps, "inf"), "attempts exhausted", "inf", attempts=2),
    dead("sleep-malformed", dispatch(sleeps, "1h1h"), "attempts exhausted", "'1h1h'",
         attempts=2),
    dead("counter-bad-name", dispatch(counts, "bad name"), "attempts exhausted", "'bad name'",
         attempts=2),
    dead("counter-sql-name", dispatch(counts, "x'); DROP TABLE stent_executions; --"),
         "attempts exhausted", "DROP TABLE", attempts=2),
    dead("counter-bad-increment", dispatch(counts, "emails", "1"), "attempts exhausted",
         "'1'", attempts=2),
    dead("custom-state-bad-key", dispatch(sets_state, "a\x00b"), "attempts exhausted",
         r"'a\x00b'", attempts=2),
    dead("signal-wait-bad-name", dispatch(waits_for, "bad name!"), "attempts exhausted",
         "'bad name!'", attempts=2),
    dead("signal-wait-negative-timeout", dispatch(waits_for, "go", -1), "attempts exhausted",
         "-1", attempts=2),
    dead("step-arg-object", dispatch(passes_a_socket), "attempts exhausted",
         "args[1]['conn']", attempts=2),
    dead("step-arg-10000-deep", dispatch(passes_deep), "attempts exhausted",
         "nested more than", attempts=2),
    # -- corrupted stored rows claimed by a worker
    dead("stored-args-garbage", tampered("args", b"\xde\xad\xbe\xef garbage"),
         "undecodable arguments"),
    dead("stored-args-truncated", tampered("args", b"\x00\x00"), "undecodable arguments",
         "truncated"),
    dead("stored-args-wrong-shape", tampered("args", b"\x00\x00\x00\x04null"),
         "undecodable arguments", "(args, kwargs)"),
    dead("stored-args-pickle", tampered("args", b"\x00\x00\x00\x05\x80\x05K\x01."),
         "undecodable arguments"),
    dead("stored-retry-policy-corrupted", tampered("retry_policy", {"max_attempts": "lots"},
                                                   fails),
         "retry policy", "max_attempts", "'lots'"),
    dead("stored-retry-policy-not-an-object",
         tampered("retry_policy", PerBackend(sqlite='{"max_attempts": 3', postgres='"three"'),
                  fails), "retry policy", "retry", attempts=1),
    Case("stored-tags-unreadable", tampered("tags", PerBackend(sqlite="not json",
                                                               postgres=[None])),
         "finishes"),
    Case("stored-tags-hostile", tampered("tags", PerBackend(sqlite='["x\'; DROP TABLE y"]',
                                                            postgres=["x'; DROP TABLE y"])),
         "finishes"),
    dead("stored-kind-unknown", _ghost_kind("bogus"), "unregistered function",
         "security:ghost"),
    # -- stored values that are legal and must come back exactly
    Case("nul-in-args-round-trips", _nul_round_trip, "ok"),
    Case("hostile-unicode-in-args-round-trips", _unicode_round_trip, "ok"),
    # -- a stored row naming a function nobody registered: left for a worker that knows it
    Case("stored-function-unknown", _ghost, "unclaimed", names=("security:ghost",)),
    Case("inserted-function-unknown", _ghost_inserted, "unclaimed", names=("security:ghost",)),
]


async def _raises_sync(fn: Callable[[], Any]) -> None:
    fn()


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES), "case ids are unique"


@pytest.fixture
def env(stent_executor: Stent, stent_backend: Backend, raw: RawDB, tmp_path: Path,
        worker_of: Any, stent_backend_kind: str) -> Env:
    return Env(stent_backend_kind, stent_executor, stent_backend, raw, tmp_path, worker_of)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_malformed_input(case: Case, env: Env) -> None:
    if case.setup is not None:
        await case.setup(env)
    before = await env.raw.counts()
    try:
        if case.expect == "error":
            await _expect_error(case, env, before)
        elif case.expect == "dead_letter":
            await _expect_dead_letter(case, env)
        elif case.expect == "unclaimed":
            await _expect_unclaimed(case, env)
        elif case.expect == "finishes":
            await _expect_finished(case, env)
        else:
            await case.act(env)
    finally:
        if case.cleanup is not None:
            await case.cleanup(env)
    await _worker_still_works(env)


async def _expect_error(case: Case, env: Env, before: dict[str, int]) -> None:
    with pytest.raises(case.error) as info:
        await asyncio.wait_for(case.act(env), 60)
    text = str(info.value)
    for name in case.names:
        assert name in text, f"{type(info.value).__name__} does not name {name!r}: {text}"
    for secret in case.absent:
        assert secret not in text, f"the error shows {secret!r}: {text}"
    assert diff_counts(before, await env.raw.counts()) == {}, "rows were written"


async def _expect_dead_letter(case: Case, env: Env) -> None:
    eid = await case.act(env)
    await env.ensure_worker()
    result = await asyncio.wait_for(env.ex.wait_for(eid), 30)
    assert not result.ok, f"{case.id} succeeded: {result}"
    letters = [d for d in await env.ex.list_dead_letters(1000) if d.execution_id == eid]
    assert letters, f"no dead letter for {case.id}"
    assert any(case.reason in d.reason for d in letters), [d.reason for d in letters]
    assert all(d.reason.strip() for d in letters)
    stored = " | ".join(str(decode_error(d.error)) for d in letters if d.error is not None)
    reasons = " | ".join(d.reason for d in letters)
    shown = f"{stored} | {result.error} | {reasons}"
    for name in case.names:
        assert name in shown, f"the dead-lettered error does not name {name!r}: {shown}"
    tasks = await env.backend.list_tasks_for_execution(eid)
    assert all(t.state in ("completed", "failed", "cancelled") for t in tasks), \
        [(t.step_name, t.state) for t in tasks]
    assert max(t.attempt for t in tasks) <= case.attempts, [(t.step_name, t.attempt)
                                                             for t in tasks]
    state = await env.ex.state_of(eid)
    assert state.state == "failed", state.state


async def _expect_finished(case: Case, env: Env) -> None:
    """The execution ends (completed, or failed with a dead letter giving a reason) after
    bounded attempts, and the worker keeps working meanwhile."""
    eid = await case.act(env)
    await _worker_still_works(env)
    result = await asyncio.wait_for(env.ex.wait_for(eid), 30)
    if not result.ok:
        letters = [d for d in await env.ex.list_dead_letters(1000) if d.execution_id == eid]
        assert letters and all(d.reason.strip() for d in letters), letters
    tasks = await env.backend.list_tasks_for_execution(eid)
    assert max(t.attempt for t in tasks) <= max(case.attempts, 1)


async def _expect_unclaimed(case: Case, env: Env) -> None:
    eid = await case.act(env)
    await env.ensure_worker()
    await _worker_still_works(env)  # the worker had every chance to claim it
    task = await env.backend.get_task(await env.root(eid))
    assert task is not None and task.state == "pending" and task.fence == 0, task
    state = await env.ex.state_of(eid)
    for name in case.names:
        assert name in state.function


async def _worker_still_works(env: Env) -> None:
    worker = await env.ensure_worker()
    eid = await env.ex.dispatch(healthy, 21)
    result = await asyncio.wait_for(env.ex.wait_for(eid), 30)
    assert result.unwrap() == 42
    assert not worker.done(), "the worker stopped"

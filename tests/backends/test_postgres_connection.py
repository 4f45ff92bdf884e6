"""PostgresBackend's connections: DSNs, passwords that never leak, schemas, the pool's
lifecycle, and errors wrapped as BackendError."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import pytest
from stent import Stent
from stent.errors import BackendError
from stent_postgres import PostgresBackend
from stent_postgres._pg_dsn import parse_dsn
from stent_testing.conformance.builders import T0, at, claim_filter, new_execution
from stent_testing.pg import (
    create_test_backend,
    dispose_test_backend,
    postgres_available,
    require_postgres,
    temporary_schema,
)

RAW_PASSWORD = "p@ss#w%rd/"
ENCODED_PASSWORD = "p%40ss%23w%25rd%2F"
#: every form the password could take in a message
PASSWORD_FORMS = (RAW_PASSWORD, ENCODED_PASSWORD, ENCODED_PASSWORD.lower(), "p@ss", "ss#w",
                  "w%rd", "%40ss%23")


@pytest.fixture
async def dsn() -> str:
    return await require_postgres()


@pytest.fixture
async def backend() -> AsyncIterator[PostgresBackend]:
    b = await create_test_backend(min_pool_size=1, max_pool_size=4)
    yield b
    await dispose_test_backend(b)


def with_credentials(dsn: str, user: str, password: str, query: str = "") -> str:
    """``dsn`` with its user information replaced (dsn is postgresql://[user@]host...)."""
    rest = dsn.split("://", 1)[1].rsplit("@", 1)[-1]
    return f"postgresql://{user}:{password}@{rest}{query}"


def assert_no_password(error: BaseException) -> None:
    """Neither the message, nor the traceback, nor any chained exception shows it."""
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        texts += [str(link), repr(link)]
        link = link.__cause__ or link.__context__
    for text in texts:
        for form in PASSWORD_FORMS:
            assert form not in text, f"{form!r} leaked in {text!r}"


# -- passwords never leak -----------------------------------------------------------------------
@pytest.mark.parametrize("password", [ENCODED_PASSWORD, RAW_PASSWORD], ids=["encoded", "raw"])
async def test_refused_connection_error_masks_the_password(password: str) -> None:
    backend = PostgresBackend(f"postgresql://u:{password}@127.0.0.1:1/db")
    with pytest.raises(BackendError) as caught:
        await backend.init_db()
    assert_no_password(caught.value)
    assert "postgresql://u:***@127.0.0.1:1/db" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    await backend.close()


async def test_refused_connection_says_why() -> None:
    backend = PostgresBackend(f"postgresql://u:{ENCODED_PASSWORD}@127.0.0.1:1/db")
    with pytest.raises(BackendError, match="connection refused"):
        await backend.count_tasks()


async def test_unencoded_password_is_reported_with_what_to_do() -> None:
    backend = PostgresBackend(f"postgresql://u:{RAW_PASSWORD}@127.0.0.1:1/db")
    with pytest.raises(BackendError, match="percent-encode") as caught:
        await backend.get_task("x")
    assert_no_password(caught.value)


async def test_authentication_failure_masks_the_password(dsn: str) -> None:
    backend = PostgresBackend(with_credentials(dsn, "no_such_stent_role", ENCODED_PASSWORD))
    with pytest.raises(BackendError) as caught:
        await backend.init_db()
    assert_no_password(caught.value)
    assert "no_such_stent_role" in str(caught.value)
    assert "28000" in str(caught.value)  # invalid_authorization_specification


async def test_password_in_query_parameter_is_masked(dsn: str) -> None:
    target = with_credentials(dsn, "no_such_stent_role", "x").replace(":x@", "@")
    backend = PostgresBackend(target + f"?password={ENCODED_PASSWORD}")
    with pytest.raises(BackendError) as caught:
        await backend.init_db()
    assert_no_password(caught.value)
    assert "password=***" in str(caught.value)


@pytest.mark.parametrize("dsn_text", [
    f"postgresql://u:{ENCODED_PASSWORD}@host:5432/db",
    f"postgresql://u:{RAW_PASSWORD}@host:5432/db",
    f"postgres://u:{ENCODED_PASSWORD}@host/db?sslmode=require",
    f"host=h user=u password={ENCODED_PASSWORD} dbname=d",
])
def test_masked_dsn_and_repr_hide_the_password(dsn_text: str) -> None:
    backend = PostgresBackend(dsn_text)
    for text in (backend.masked_dsn, repr(backend), parse_dsn(dsn_text).masked):
        for form in PASSWORD_FORMS:
            assert form not in text
        assert "***" in text


# -- DSNs ----------------------------------------------------------------------------------------
async def test_dsn_with_sslmode_is_accepted(dsn: str) -> None:
    sep = "&" if "?" in dsn else "?"
    async with temporary_schema(dsn) as schema:
        for mode in ("disable", "prefer"):
            backend = PostgresBackend(f"{dsn}{sep}sslmode={mode}", schema=schema,
                                      min_pool_size=1)
            await backend.init_db()
            assert await backend.count_tasks(state="pending") == 0
            await backend.close()


async def test_sslmode_require_on_a_server_without_ssl_is_a_clear_backend_error(
    dsn: str,
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        ssl_on = await conn.fetchval("SHOW ssl") == "on"
    finally:
        await conn.close()
    sep = "&" if "?" in dsn else "?"
    if ssl_on:
        # a server with SSL: sslmode=require simply works there, which is what to show
        conn = await asyncpg.connect(f"{dsn}{sep}sslmode=require")
        await conn.close()
        return
    backend = PostgresBackend(with_credentials(dsn, "postgres", ENCODED_PASSWORD,
                                               f"{sep}sslmode=require"))
    with pytest.raises(BackendError, match="SSL") as caught:
        await backend.init_db()
    assert_no_password(caught.value)


@pytest.mark.parametrize("schema", ["", "1abc", "a-b", 'x"; DROP TABLE y; --', "a" * 64, "é"])
def test_invalid_schema_names_are_refused(schema: str) -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        PostgresBackend("postgresql://u@h/db", schema=schema)


@pytest.mark.parametrize("sizes", [(3, 2), (-1, 2), (0, 0)])
def test_invalid_pool_sizes_are_refused(sizes: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="pool sizes"):
        PostgresBackend("postgresql://u@h/db", min_pool_size=sizes[0], max_pool_size=sizes[1])


def test_backend_is_reached_through_stent_backends(dsn: str) -> None:
    backend = Stent.backends.PostgresBackend(dsn)
    assert isinstance(backend, PostgresBackend)
    assert backend.schema == "public"


# -- schemas -------------------------------------------------------------------------------------
async def test_backends_on_two_schemas_do_not_see_each_other(dsn: str) -> None:
    a = await create_test_backend(min_pool_size=1)
    b = await create_test_backend(min_pool_size=1)
    try:
        new = new_execution()
        await a.create_execution(new, T0)
        assert await a.get_execution(new.id) is not None
        assert await b.get_execution(new.id) is None
        assert await b.claim("w", claim_filter(), 10, T0, at(60)) == []
        assert len(await a.claim("w", claim_filter(), 10, T0, at(60))) == 1
    finally:
        await dispose_test_backend(a)
        await dispose_test_backend(b)


async def test_init_db_creates_a_missing_schema(dsn: str) -> None:
    async with temporary_schema(dsn) as existing:
        missing = existing + "_new"
        backend = PostgresBackend(dsn, schema=missing, min_pool_size=1)
        try:
            await backend.init_db()
            new = new_execution()
            assert await backend.create_execution(new, T0) == (new.id, True)
        finally:
            await backend.close()
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{missing}" CASCADE')
            finally:
                await conn.close()


async def test_operation_before_init_db_says_to_call_it(dsn: str) -> None:
    async with temporary_schema(dsn) as schema:
        backend = PostgresBackend(dsn, schema=schema, min_pool_size=1)
        try:
            with pytest.raises(BackendError, match=r"call init_db\(\) first"):
                await backend.get_task("x")
            with pytest.raises(BackendError, match=r"call init_db\(\) first"):
                await backend.create_execution(new_execution(), T0)
        finally:
            await backend.close()


# -- the pool ------------------------------------------------------------------------------------
async def test_pool_is_created_lazily(dsn: str) -> None:
    backend = PostgresBackend(f"postgresql://u:{ENCODED_PASSWORD}@127.0.0.1:1/db")
    await backend.close()  # nothing to close yet, and no connection attempted
    assert backend.stats == {"statements": 0, "transactions": 0}


async def test_backend_reopens_after_close(backend: PostgresBackend) -> None:
    new = new_execution()
    await backend.create_execution(new, T0)
    await backend.close()
    assert await backend.get_execution(new.id) is not None
    await backend.close()
    await backend.close()


async def test_close_waits_for_calls_in_flight(backend: PostgresBackend) -> None:
    news = [new_execution() for _ in range(20)]
    calls = [asyncio.ensure_future(backend.create_execution(n, T0)) for n in news]
    await asyncio.sleep(0)
    await backend.close()
    results = await asyncio.gather(*calls, return_exceptions=True)
    for n, result in zip(news, results, strict=True):
        if isinstance(result, BaseException):
            assert isinstance(result, BackendError)  # refused, never half-done
        else:
            assert result == (n.id, True)
    created = {n.id for n, r in zip(news, results, strict=True) if isinstance(r, tuple)}
    assert await backend.count_executions() == len(created)


async def test_lost_connections_are_backend_errors_and_the_pool_recovers(
    backend: PostgresBackend, dsn: str,
) -> None:
    await backend.create_execution(new_execution(), T0)
    admin = await asyncpg.connect(dsn)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1", f"stent:{backend.schema}")
    finally:
        await admin.close()
    assert killed >= 1
    outcomes = []
    for _ in range(6):
        try:
            outcomes.append(await backend.count_executions())
        except BackendError as exc:
            assert "PostgreSQL at" in str(exc)
            outcomes.append(None)
    assert outcomes[-1] == 1  # dead connections are dropped, new ones opened


async def test_statement_errors_are_backend_errors_with_the_cause(
    backend: PostgresBackend,
) -> None:
    new = new_execution()
    await backend.create_execution(new, T0)
    clash = new_execution(root_id=new.root.id)  # a new execution, a taken root task id
    with pytest.raises(BackendError, match="23505") as caught:
        await backend.create_execution(clash, T0)
    assert isinstance(caught.value.__cause__, asyncpg.UniqueViolationError)
    assert await backend.get_execution(clash.id) is None  # one statement: all or nothing


async def test_unreachable_server_is_reported_by_the_test_kit() -> None:
    assert await postgres_available("postgresql://u@127.0.0.1:1/db") is False


# -- times ---------------------------------------------------------------------------------------
async def test_naive_cutoff_from_the_deployment_guide_works(backend: PostgresBackend) -> None:
    _, created = await backend.create_execution(new := new_execution(), T0)
    assert created
    (root,) = await backend.claim("w", claim_filter(), 1, T0, at(60))
    await backend.complete_task(root.id, root.fence, b"1", T0)
    assert await backend.cleanup_executions(datetime.now() - timedelta(days=30)) == 0
    assert await backend.cleanup_executions(datetime.now() + timedelta(days=3650)) == 1
    assert await backend.get_execution(new.id) is None


async def test_manual_reclaim_from_the_deployment_guide(backend: PostgresBackend) -> None:
    new = new_execution()
    await backend.create_execution(new, T0)
    (held,) = await backend.claim("w-stuck", claim_filter(), 1, T0, at(60))
    task = await backend.get_task(held.id)
    assert task is not None
    task.state = "pending"
    task.worker_id = None
    await backend.update_task(task)
    assert task.fence == held.fence + 1
    assert await backend.count_tasks(state="pending") == 1
    assert await backend.complete_task(held.id, held.fence, b"late", at(1)) is False
    (again,) = await backend.claim("w-2", claim_filter(), 1, at(1), at(60))
    assert again.id == held.id

"""PostgreSQL for tests: a fresh, uniquely named schema per test, dropped afterwards.

The server is the one at ``$STENT_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Every test gets its own schema
(``stent_t_<8 hex digits>``), so tests run in parallel (``pytest -n auto``) without seeing
each other's rows, and nothing is left behind when they end.

When the server cannot be reached, tests that need it are skipped with the reason, unless
``CI=true``, where that is a failure: a CI run that silently skips the Postgres suite proves
nothing.

With ``STENT_TEST_PG_ROLE=restricted``, :func:`create_test_backend` migrates the schema as the
DSN's (owner) role, then hands the test a backend connected as ``stent_restricted``, a role
with only SELECT/INSERT/UPDATE/DELETE on Stent's tables, USAGE on its sequences and EXECUTE on
its functions (least privilege: what a production worker needs).

Needs ``stent-postgres`` (and so asyncpg); imported only by tests that use PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from stent_postgres import PostgresBackend

DSN_ENV = "STENT_TEST_POSTGRES_DSN"
#: ``restricted``: tests get a backend connected as :data:`RESTRICTED_ROLE` (see the docstring)
ROLE_ENV = "STENT_TEST_PG_ROLE"
RESTRICTED_ROLE = "stent_restricted"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: Prefix of the schemas this module creates (and may drop).
SCHEMA_PREFIX = "stent_t_"

_reachability: dict[str, str | None] = {}
_test_schemas: weakref.WeakKeyDictionary[PostgresBackend, tuple[str, str]] = (
    weakref.WeakKeyDictionary())


def postgres_test_dsn() -> str:
    """The DSN of the test server: ``$STENT_TEST_POSTGRES_DSN`` or the local default."""
    return os.environ.get(DSN_ENV) or DEFAULT_DSN


def new_schema_name() -> str:
    """A fresh schema name, ``stent_t_`` and eight hex digits."""
    return f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:8]}"


async def _connect(dsn: str) -> Any:
    import asyncpg

    return await asyncpg.connect(dsn, timeout=5)


async def unreachable_reason(dsn: str | None = None) -> str | None:
    """Why the test server cannot be used (None when it can); cached per DSN."""
    dsn = dsn or postgres_test_dsn()
    if dsn not in _reachability:
        from stent.errors import BackendError
        from stent_postgres._pg_dsn import connect_error, parse_dsn

        reason: str | None = None
        try:
            conn = await _connect(dsn)
        except ImportError as exc:
            reason = f"stent-postgres or asyncpg is not installed ({exc})"
        except Exception as exc:  # any failure to connect makes the server unusable here
            error: BackendError = connect_error(parse_dsn(dsn), exc)
            reason = str(error).split(": ", 1)[-1]
        else:
            await conn.close()
        _reachability[dsn] = reason
    return _reachability[dsn]


async def postgres_available(dsn: str | None = None) -> bool:
    """Whether the test server (``$STENT_TEST_POSTGRES_DSN``) accepts connections."""
    return await unreachable_reason(dsn) is None


def _unavailable(dsn: str, reason: str) -> NoReturn:
    from stent_postgres._pg_dsn import parse_dsn

    message = f"PostgreSQL not reachable at {parse_dsn(dsn).masked}: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + f" (CI=true: PostgreSQL is required; set {DSN_ENV})")
    pytest.skip(message)  # outside CI only: under CI=true this failed just above


async def require_postgres(dsn: str | None = None) -> str:
    """Return the test DSN; skip the test (fail it under ``CI=true``) if unreachable."""
    dsn = dsn or postgres_test_dsn()
    reason = await unreachable_reason(dsn)
    if reason is not None:
        _unavailable(dsn, reason)
    return dsn


async def create_schema(name: str, dsn: str | None = None) -> None:
    """Create schema ``name`` on the test server."""
    await _schema_statement("create_schema", name, dsn or postgres_test_dsn())


async def drop_schema(name: str, dsn: str | None = None) -> None:
    """Drop schema ``name`` and everything in it (it must be one of ours: ``stent_t_...``)."""
    if not name.startswith(SCHEMA_PREFIX):
        raise ValueError(f"refusing to drop schema {name!r}: not a test schema")
    import asyncpg

    # A test may leave a background write of its own still running against the schema (a
    # worker giving back leases after it was cancelled); DROP then meets its locks and
    # PostgreSQL may pick the DROP as the deadlock victim. Waiting a moment and retrying is
    # enough: those writes are short.
    for attempt in range(1, 6):
        try:
            await _schema_statement("drop_schema", name, dsn or postgres_test_dsn())
            return
        except (asyncpg.DeadlockDetectedError, asyncpg.LockNotAvailableError):
            if attempt == 5:
                raise
            await asyncio.sleep(0.1 * attempt)


async def _schema_statement(query: str, name: str, dsn: str) -> None:
    from stent_postgres._pg_dsn import validate_schema
    from stent_postgres.migrations import load_queries

    # The name is checked against an identifier pattern and quoted (validate_schema).
    sql = load_queries("postgres")[query].replace("{schema}", validate_schema(name))
    conn = await _connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def temporary_schema(dsn: str | None = None) -> AsyncIterator[str]:
    """A fresh, empty schema for one test, dropped (CASCADE) when the block ends.

    Skips the test (fails it under ``CI=true``) if the server is unreachable.

    Yields:
        The schema's name.
    """
    dsn = await require_postgres(dsn)
    name = new_schema_name()
    await create_schema(name, dsn)
    try:
        yield name
    finally:
        await asyncio.shield(drop_schema(name, dsn))


async def create_test_backend(dsn: str | None = None, **options: Any) -> PostgresBackend:
    """A ``PostgresBackend`` on a fresh schema of the test server, ``init_db()`` done.

    Release it with :func:`dispose_test_backend`, which closes it and drops its schema.
    Skips the test (fails it under ``CI=true``) if the server is unreachable.

    Args:
        dsn: the server; default :func:`postgres_test_dsn`.
        **options: passed to ``PostgresBackend`` (``max_pool_size=...``); not ``schema``.

    Returns:
        The backend, on a schema of its own.
    """
    from stent_postgres import PostgresBackend

    dsn = await require_postgres(dsn)
    name = new_schema_name()
    await create_schema(name, dsn)
    backend = PostgresBackend(dsn, schema=name, **options)
    _test_schemas[backend] = (dsn, name)
    try:
        await backend.init_db()
        role = os.environ.get(ROLE_ENV, "")
        if role == "restricted":
            restricted = PostgresBackend(await _grant_restricted(dsn, name), schema=name,
                                         **options)
            _test_schemas[restricted] = _test_schemas.pop(backend)  # dropped by the owner
            await backend.close()
            backend = restricted
        elif role:
            raise ValueError(f"{ROLE_ENV}={role!r}: expected 'restricted' or nothing")
    except BaseException:
        await dispose_test_backend(backend)
        raise
    return backend


async def _grant_restricted(dsn: str, schema: str) -> str:
    """Give :data:`RESTRICTED_ROLE` the least privileges on ``schema``; its DSN."""
    from urllib.parse import urlsplit, urlunsplit

    from stent_postgres._pg_dsn import validate_schema

    parts = urlsplit(dsn)
    if not parts.scheme.startswith("postgres"):
        raise ValueError(f"{ROLE_ENV}=restricted needs a URL-form {DSN_ENV}")
    quoted = validate_schema(schema)
    conn = await _connect(dsn)
    try:
        # roles are cluster-wide: parallel tests may race to create it
        await conn.execute(f"""
            DO $$ BEGIN
                CREATE ROLE {RESTRICTED_ROLE} LOGIN PASSWORD '{RESTRICTED_ROLE}';
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END $$;
            GRANT USAGE ON SCHEMA {quoted} TO {RESTRICTED_ROLE};
            GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {quoted}
                TO {RESTRICTED_ROLE};
            GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {quoted} TO {RESTRICTED_ROLE};
            GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {quoted} TO {RESTRICTED_ROLE};
        """)
    finally:
        await conn.close()
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{RESTRICTED_ROLE}:{RESTRICTED_ROLE}@{host}" + (
        f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def dispose_test_backend(backend: object) -> None:
    """Close a backend from :func:`create_test_backend` and drop its schema.

    A no-op for any other backend, so fixtures may call it unconditionally.
    """
    from stent_postgres import PostgresBackend

    if not isinstance(backend, PostgresBackend):
        return
    entry = _test_schemas.pop(backend, None)
    if entry is None:
        return
    dsn, name = entry
    try:
        await asyncio.wait_for(backend.close(), 10)
    finally:
        await drop_schema(name, dsn)

"""The asyncpg pool behind PostgresBackend: opening it lazily, running named statements,
turning every failure into a password-free ``BackendError``, and migrating the schema.

Round trips are what a backend call costs (a statement takes well under a millisecond on
the server), so:

* Each engine operation is ONE statement (a chain of CTEs, or a call to one of the schema's
  PL/pgSQL functions), run in autocommit: one transaction, and one round trip once asyncpg
  has prepared it on that connection (asyncpg caches prepared statements per connection).
* The pool's per-release reset (``RESET ALL; UNLISTEN *; ...``, one more round trip per call)
  is replaced by a no-op: no statement here changes session state (the schema is set once per
  connection through ``search_path`` at connect time, advisory locks are transaction-scoped,
  and nothing LISTENs on a pool connection). asyncpg still rolls back a connection that is
  released inside a transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, cast

import asyncpg
from stent.errors import BackendError, SchemaVersionError

from ._pg_dsn import (
    Dsn,
    connect_error,
    parse_dsn,
    query_error,
    unencoded_userinfo_error,
    validate_schema,
)
from .migrations import Migration, load_migrations, load_queries

Row = Mapping[str, Any]

Q = load_queries("postgres")
MIGRATIONS = load_migrations("postgres")
#: Class id of the advisory lock that serializes migrations (the second key is the schema).
MIGRATION_LOCK = 0x5E47  # "STENT"-ish; any constant would do, it only has to be ours
#: SQLSTATEs of a statement the server aborted only because of a race with another one
#: (deadlock detected, serialization failure): safe to run again, nothing was written.
_RETRYABLE = frozenset({"40P01", "40001"})
_RETRIES = 3

#: What asyncpg raises: server errors, client/protocol errors, network errors.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError,
                  asyncpg.exceptions.InternalClientError, OSError, TimeoutError, ValueError)

_log = logging.getLogger("stent.postgres")


def full_schema_sql() -> str:
    """The text of ``schema/postgres/schema.sql``: the whole current schema in one file."""
    return resources.files("stent_postgres").joinpath("schema", "postgres",
                                                      "schema.sql").read_text("utf-8")


async def _keep_session(_connection: Any) -> None:
    """Pool reset hook: nothing to reset (see the module docstring)."""


class _PoolFloorWarnings(logging.Filter):
    """At most one of asyncpg's "Failed to restore the pool connection floor" WARNINGs per
    30 s; the others are dropped.

    While the server is down, asyncpg's pool retries its ``min_size`` connections in the
    background and logs a WARNING, with a traceback, at every failed try (1, 2, 4, ... s
    apart). The engine's own outage reporting is one WARNING per 30 s; this keeps the pool's
    to the same rule.
    """

    every_s = 30.0

    def __init__(self) -> None:
        super().__init__()
        self._last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or "pool connection floor" not in str(record.msg):
            return True
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return False
        self._last = now
        return True


def _quiet_pool_floor_warnings() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolFloorWarnings) for f in pool_log.filters):
        pool_log.addFilter(_PoolFloorWarnings())


class _Pool:
    """An asyncpg pool and the calls using it (so that closing it can wait for them)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.users = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def done_with(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._idle.set()

    async def close(self) -> None:
        if self.users:
            self._idle.clear()
            await self._idle.wait()
        try:
            await self.pool.close()
        except _DRIVER_ERRORS:
            self.pool.terminate()


class PostgresDatabase:
    """A lazily opened asyncpg pool with error wrapping.

    Attributes:
        stats: ``statements`` (statements sent, each one round trip once prepared) and
            ``transactions`` (explicit multi-statement transactions), for tests and tuning.
    """

    def __init__(
        self, dsn: str, *, min_size: int, max_size: int, schema: str, connect_timeout: float,
    ) -> None:
        if not isinstance(dsn, str) or not dsn:
            raise ValueError("PostgresBackend needs a DSN such as postgresql://user@host/db")
        if min_size < 0 or max_size < 1 or min_size > max_size:
            raise ValueError(f"invalid pool sizes: min_pool_size={min_size}, "
                             f"max_pool_size={max_size}")
        self.dsn: Dsn = parse_dsn(dsn)
        self.schema = schema
        self.quoted_schema = validate_schema(schema)
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        #: calls holding a connection right now (a test clock waits for them)
        self.in_flight = 0
        self.stats: dict[str, int] = {"statements": 0, "transactions": 0}
        self._pool: _Pool | None = None
        self._opening: asyncio.Lock | None = None

    # -- the pool --------------------------------------------------------------------------
    async def _get_pool(self) -> _Pool:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                self._pool = _Pool(await self._open())
        return self._pool

    async def _open(self) -> Any:
        if self.dsn.unencoded_userinfo:
            raise unencoded_userinfo_error(self.dsn)
        _quiet_pool_floor_warnings()
        failure: BaseException | None = None
        try:
            pool = await asyncpg.create_pool(
                dsn=self.dsn.url,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=self.connect_timeout,
                reset=_keep_session,
                # search_path is a startup parameter of every pooled connection, so every
                # unqualified table name in queries/postgres.sql resolves in this schema.
                # application_name tells them apart in pg_stat_activity.
                server_settings={"search_path": self.quoted_schema,
                                 "application_name": f"stent:{self.schema}"[:63]},
            )
        except _DRIVER_ERRORS as exc:
            failure = exc
        else:
            return pool
        # Raised outside the except block: neither __cause__ nor __context__ carries
        # asyncpg's exception, whose text may quote the DSN and its password.
        error = connect_error(self.dsn, failure)
        del failure
        raise error

    async def close(self) -> None:
        """Close the pool once the calls using it are done; the next call opens a new one.

        The pool is detached first (a call made from now on opens a fresh pool), then closed
        when the last call that was already using it (or queued for one of its connections)
        has finished: asyncpg's own ``Pool.close`` could close a connection that a queued
        ``acquire`` has just been handed.
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        self.in_flight += 1
        try:
            async with self._pooled_connection() as conn:
                yield conn
        finally:
            self.in_flight -= 1

    @asynccontextmanager
    async def _pooled_connection(self) -> AsyncIterator[Any]:
        pool = await self._get_pool()
        failure: BaseException | None = None
        pool.users += 1
        try:
            try:
                conn = await pool.pool.acquire()
            except _DRIVER_ERRORS as exc:
                failure = exc
            else:
                try:
                    yield conn
                finally:
                    await pool.pool.release(conn)
                return
        finally:
            pool.done_with()
        error = connect_error(self.dsn, failure)
        del failure
        raise error

    # -- statements ------------------------------------------------------------------------
    async def fetch(self, query: str, *args: Any) -> list[Row]:
        """Run named query ``query`` in its own transaction; all rows."""
        return cast(list[Row], await self._run("fetch", query, args))

    async def fetchrow(self, query: str, *args: Any) -> Row | None:
        """Run named query ``query`` in its own transaction; the first row or None."""
        return cast(Row | None, await self._run("fetchrow", query, args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        """Run named query ``query`` in its own transaction; the first column of the first
        row."""
        return await self._run("fetchval", query, args)

    async def _run(self, method: str, query: str, args: Sequence[Any]) -> Any:
        sql = Q[query]
        for attempt in range(1, _RETRIES + 1):
            async with self._connection() as conn:
                self.stats["statements"] += 1
                try:
                    return await getattr(conn, method)(sql, *args)
                except asyncpg.PostgresError as exc:
                    if exc.sqlstate in _RETRYABLE and attempt < _RETRIES:
                        # The statement was rolled back whole; running it again is safe.
                        _log.info("PostgreSQL %s in %s, retrying", exc.sqlstate, query)
                        await asyncio.sleep(0.01 * attempt)
                        continue
                    raise self._wrap(exc, query) from self._chain(exc)
                except _DRIVER_ERRORS as exc:
                    raise self._wrap(exc, query) from self._chain(exc)
        raise AssertionError("unreachable")  # pragma: no cover

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One explicit transaction on one connection, for the few multi-statement calls."""
        async with self._connection() as conn:
            self.stats["transactions"] += 1
            try:
                async with conn.transaction():
                    yield Transaction(self, conn)
            except _DRIVER_ERRORS as exc:
                raise self._wrap(exc, "transaction") from self._chain(exc)

    def _wrap(self, exc: BaseException, context: str) -> BackendError:
        return query_error(self.dsn, exc, context=context)

    def _chain(self, exc: BaseException) -> BaseException | None:
        """The exception to chain from: the original, unless its text quotes the password."""
        return None if self.dsn.leaks(str(exc)) else exc

    # -- migrations ------------------------------------------------------------------------
    async def migrate(self) -> int:
        """Create the schema if missing and apply pending migrations; returns the version.

        A current schema is recognised without a lock or any DDL (workers restarting, or a
        role without the CREATE privilege, call this on every start). Otherwise: one
        transaction under a transaction-scoped advisory lock keyed on this package and the
        schema name, so workers starting together take turns, and each one after the first
        finds the schema current and changes nothing (``CREATE ... IF NOT EXISTS`` alone is
        not safe against a concurrent creator; the lock is).

        Raises:
            SchemaVersionError: the schema was migrated by a newer stent-postgres.
        """
        newest = MIGRATIONS[-1].version if MIGRATIONS else 0
        if await self.fetchval("version_table_exists"):
            version = int(await self.fetchval("recorded_version"))
            _check_version(version, newest)
            if version == newest:
                return version
        async with self.transaction() as tx:
            await tx.fetchval("lock_migrations", MIGRATION_LOCK, self.schema)
            if not await tx.fetchval("schema_exists", self.schema):
                await tx.execute_script(Q["create_schema"].replace("{schema}",
                                                                   self.quoted_schema))
            return await _migrate(tx, MIGRATIONS)


class Transaction:
    """Statements inside one explicit transaction (see :meth:`PostgresDatabase.transaction`)."""

    def __init__(self, db: PostgresDatabase, conn: Any) -> None:
        self._db = db
        self._conn = conn

    async def fetchrow(self, query: str, *args: Any) -> Row | None:
        """Run named query ``query``; the first row or None."""
        self._db.stats["statements"] += 1
        return cast(Row | None, await self._conn.fetchrow(Q[query], *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        """Run named query ``query``; the first column of the first row."""
        self._db.stats["statements"] += 1
        return await self._conn.fetchval(Q[query], *args)

    async def execute_script(self, sql: str) -> None:
        """Run a multi-statement script (a migration) with the simple query protocol."""
        self._db.stats["statements"] += 1
        await self._conn.execute(sql)


def _check_version(version: int, newest: int) -> None:
    if version > newest:
        raise SchemaVersionError(
            f"database schema version {version} is newer than this stent-postgres "
            f"supports ({newest}); upgrade stent-postgres"
        )


async def _migrate(tx: Transaction, migrations: list[Migration]) -> int:
    newest = migrations[-1].version if migrations else 0
    # Read under the lock: whoever held it before may have migrated meanwhile.
    if not await tx.fetchval("version_table_exists"):
        await tx.execute_script(Q["create_version_table"])
    version = int(await tx.fetchval("recorded_version"))
    _check_version(version, newest)
    for migration in migrations:
        if migration.version <= version:
            continue
        _log.info("applying Stent migration %s", migration.name)
        await tx.execute_script(migration.sql)
        await tx.fetchval("record_version", migration.version)
    return newest

"""One SQLite connection, its thread, and group commit.

aiosqlite runs every call on the connection's own thread; each call is one hop there and
back (about 0.1 ms on a busy machine), so the hop count, not SQLite, sets the cost of a step.
Hence the shape of this module:

* An operation is a plain function of a ``sqlite3.Connection`` that runs on that thread.
* **Writes** are queued. One flusher task at a time takes every queued operation and ships
  them as one batch in ONE hop: ``BEGIN IMMEDIATE``, each operation inside its own
  ``SAVEPOINT`` (an operation that raises is rolled back alone and its caller gets the
  exception; the others commit), ``COMMIT``. Operations queued while a batch is on the
  thread form the next batch, so many coroutines share one commit.
* **Reads** are one hop each. The thread runs calls one at a time, and a batch is a single
  call, so a read can never observe another batch's uncommitted writes.

Cancellation: a caller only awaits its own future. The batch runs in the flusher task, which
no caller owns, so a cancelled caller cannot leave a transaction half done; an operation
whose caller was cancelled before its batch started is dropped, never run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import aiosqlite
from stent.errors import BackendError, SchemaVersionError

from .migrations import Migration, load_migrations, split_sqlite_statements

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]

_MIGRATIONS = load_migrations("sqlite")
_log = logging.getLogger("stent.sqlite")


def backend_error(exc: sqlite3.Error) -> BackendError:
    """A :class:`BackendError` carrying the SQLite message (chain it with ``from``)."""
    message = str(exc)
    if "no such table: stent_" in message:
        message += " (the Stent tables are missing: call init_db() first)"
    return BackendError(f"SQLite: {message}")


class _Batch:
    """The outcomes of one batch, filled in on the connection thread."""

    __slots__ = ("failure", "outcomes")

    def __init__(self, size: int) -> None:
        self.outcomes: list[tuple[bool, Any]] = [(False, None)] * size
        self.failure: BaseException | None = None


def _run_batch(conn: sqlite3.Connection, ops: list[Operation[Any]]) -> _Batch:
    """Run ``ops`` in one write transaction (on the connection thread)."""
    batch = _Batch(len(ops))
    try:
        # IMMEDIATE takes the write lock now (waiting up to busy_timeout for other
        # processes), so no operation can fail half-way on a lock upgrade.
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        batch.failure = exc
        return batch
    try:
        for i, op in enumerate(ops):
            conn.execute("SAVEPOINT stent_op")
            try:
                batch.outcomes[i] = (True, op(conn))
            except Exception as exc:
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back by itself (disk full, I/O
                    # error): the earlier operations are lost too, so all of them fail.
                    raise
                conn.execute("ROLLBACK TO stent_op")
                batch.outcomes[i] = (False, exc)
            conn.execute("RELEASE stent_op")
        conn.execute("COMMIT")
    except BaseException as exc:
        batch.failure = exc
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    return batch


def _migrate(conn: sqlite3.Connection, migrations: list[Migration]) -> int:
    """Bring the schema up to date (on the connection thread); returns the version."""
    newest = migrations[-1].version if migrations else 0

    def recorded() -> int:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stent_schema_version'"
        ).fetchone()
        if exists is None:
            return 0
        row = conn.execute("SELECT max(version) FROM stent_schema_version").fetchone()
        return int(row[0] or 0)

    def check(version: int) -> None:
        if version > newest:
            raise SchemaVersionError(
                f"database schema version {version} is newer than this stent-postgres "
                f"supports ({newest}); upgrade stent-postgres"
            )

    # Fast path without the write lock: many workers starting at once on a current schema.
    version = recorded()
    check(version)
    if version == newest:
        return version
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        version = recorded()
        check(version)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS stent_schema_version ("
            "version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        for migration in migrations:
            if migration.version <= version:
                continue
            for statement in split_sqlite_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO stent_schema_version (version, applied_at) VALUES (?, ?)",
                (migration.version, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return newest


class SQLiteDatabase:
    """A lazily opened aiosqlite connection with group-committed writes.

    Attributes:
        stats: ``batches`` (write transactions attempted), ``commits`` (committed ones) and
            ``operations`` (write operations run), for tests and tuning.
    """

    def __init__(self, path: str | os.PathLike[str], busy_timeout: float) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        #: calls on the connection thread right now (a test clock waits for them)
        self.in_flight = 0
        self.stats: dict[str, int] = {"batches": 0, "commits": 0, "operations": 0}
        self._conn: aiosqlite.Connection | None = None
        self._opening: asyncio.Lock | None = None
        self._queue: list[tuple[Operation[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def in_memory(self) -> bool:
        """Whether this is a private in-memory database."""
        return self.path in (":memory:", "") or self.path.startswith("file::memory:")

    async def _connection(self) -> aiosqlite.Connection:
        if self._conn is not None:
            return self._conn
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._conn is None:
                self._conn = await self._open()
        return self._conn

    async def _open(self) -> aiosqlite.Connection:
        # timeout= is SQLite's busy timeout (what PRAGMA busy_timeout sets): how long a
        # statement waits for another connection's lock before failing with "locked".
        conn = aiosqlite.connect(
            self.path, isolation_level=None, timeout=self.busy_timeout,
            cached_statements=256, uri=self.path.startswith("file:"),
        )
        # aiosqlite's thread is not a daemon, so a backend never closed (one handed to
        # Stent.use lives as long as the process) would keep the interpreter from exiting.
        # Nothing is lost by not saying goodbye: every committed transaction is in the file
        # already, and SQLite recovers from an abandoned connection as from a crash.
        conn._thread.daemon = True
        try:
            await conn
        except sqlite3.Error as exc:
            raise backend_error(exc) from exc
        try:
            conn.row_factory = sqlite3.Row
            if not self.in_memory:
                await self._use_wal(conn)
            await conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            await conn.close()
            raise backend_error(exc) from exc
        return conn

    async def _use_wal(self, conn: aiosqlite.Connection) -> None:
        """Put the file in WAL mode (a property of the file, kept once set).

        WAL: readers never block the writer, and a commit appends to the log instead of
        rewriting pages. With synchronous=NORMAL a commit is not fsynced: a power cut may
        lose the last commits, never corrupt the file; a process crash loses nothing.
        """
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                rows = await conn.execute_fetchall("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                # Two connections switching a new file to WAL at once: SQLite answers one of
                # them "locked" at once, without waiting in the busy handler (that wait
                # could deadlock). Try again until the busy timeout is spent.
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.005)
        mode = next(iter(rows))[0]
        if mode != "wal":
            _log.warning("SQLite database %s cannot use WAL (journal mode stays %s); "
                         "concurrent access will be slower", self.path, mode)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(raw connection)`` on the connection thread: one hop."""
        self.in_flight += 1
        try:
            conn = await self._connection()
            raw = conn._conn  # the sqlite3.Connection that lives on aiosqlite's thread
            # aiosqlite has no public "run this callable on your thread"; _execute is the
            # method its own Cursor uses for exactly that. tests/backends/test_sqlite_specific.py
            # pins it.
            execute = cast(Callable[..., Any], conn._execute)
            return cast(T, await execute(fn, raw))
        finally:
            self.in_flight -= 1

    async def migrate(self) -> int:
        """Apply pending migrations; returns the schema version."""
        try:
            return await self._call(lambda raw: _migrate(raw, _MIGRATIONS))
        except sqlite3.Error as exc:
            raise backend_error(exc) from exc

    async def read(self, op: Operation[T]) -> T:
        """Run a read-only operation (autocommit: it sees the latest committed data)."""
        try:
            return await self._call(op)
        except sqlite3.Error as exc:
            raise backend_error(exc) from exc

    async def write(self, op: Operation[T]) -> T:
        """Run a write operation in the next group-committed transaction.

        Returns:
            What ``op`` returned, once its transaction has committed.

        Raises:
            Whatever ``op`` raised (its writes rolled back alone); ``BackendError`` for a
            SQLite failure of the operation or of the whole transaction.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                entries = [(op, fut) for op, fut in self._queue if not fut.cancelled()]
                self._queue = []
                if entries:
                    await self._commit(entries)
        finally:
            self._flusher = None

    async def _commit(self, entries: list[tuple[Operation[Any], asyncio.Future[Any]]]) -> None:
        ops = [op for op, _ in entries]
        self.stats["batches"] += 1
        self.stats["operations"] += len(ops)
        try:
            batch = await self._call(lambda raw: _run_batch(raw, ops))
        except asyncio.CancelledError:
            # Only the event loop shutting down cancels the flusher. The batch itself still
            # runs to its end on the connection thread (commit or rollback, never half).
            for _, future in entries:
                future.cancel()
            raise
        except Exception as exc:  # the connection could not be opened, or was closed
            batch = _Batch(len(ops))
            batch.failure = exc
        if batch.failure is None:
            self.stats["commits"] += 1
        for i, (_, future) in enumerate(entries):
            if future.done():  # the caller was cancelled while its batch ran
                continue
            if batch.failure is not None:
                future.set_exception(_caller_error(batch.failure))
                continue
            ok, value = batch.outcomes[i]
            if ok:
                future.set_result(value)
            else:
                future.set_exception(_caller_error(value))

    async def close(self) -> None:
        """Let queued writes finish, then close the connection (reopened on next use)."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


def _caller_error(exc: BaseException) -> BaseException:
    """The exception a caller sees: SQLite errors become ``BackendError`` (chained)."""
    if isinstance(exc, sqlite3.Error):
        wrapped = backend_error(exc)
        wrapped.__cause__ = exc
        return wrapped
    if isinstance(exc, ValueError) and str(exc) == "Connection closed":
        wrapped = BackendError("SQLite: the connection was closed while a write was queued")
        wrapped.__cause__ = exc
        return wrapped
    return exc

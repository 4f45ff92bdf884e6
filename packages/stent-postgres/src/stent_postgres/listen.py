"""``PostgresNotifications``: cross-process wake-ups over PostgreSQL ``LISTEN/NOTIFY``.

Messages carry ids only. Publishing happens after the state change has committed, on a
connection of its own and off the write path: a ``NOTIFY`` inside the writing transaction
would serialise every commit on PostgreSQL's notification queue lock. Ids published within a
few milliseconds of each other share one ``pg_notify`` call. Losing a message (a dropped
connection, a restart) costs latency only: the engine's database poll is the safety net. The
listening connection is re-opened with capped backoff whenever it drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import Sequence
from typing import Any

import asyncpg
from stent.backend import NotificationHandler

log = logging.getLogger("stent.notifications.postgres")

#: NOTIFY payloads are limited to 8000 bytes; ids are 32 hex characters plus a separator
_MAX_IDS_PER_MESSAGE = 200
_COALESCE_S = 0.002
_CHANNELS = ("work", "done")


def channel_name(prefix: str, channel: str) -> str:
    """The PostgreSQL channel for ``channel`` under ``prefix`` (an identifier)."""
    return f"{prefix}_{channel}"


class PostgresNotifications:
    """A ``NotificationBackend`` on LISTEN/NOTIFY.

    Args:
        dsn: a libpq-style connection string (the backend's own).
        prefix: channel prefix, so that executors on different schemas do not wake each
            other (``stent_<schema>`` by default from ``PostgresBackend``).
        mask: turns the DSN into something printable (passwords hidden) for log messages.
    """

    def __init__(self, dsn: str, *, prefix: str = "stent", mask: Any = None) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", prefix):
            raise ValueError(f"invalid notification channel prefix {prefix!r}")
        self._dsn = dsn
        self._prefix = prefix
        self._mask = mask or (lambda s: "<dsn>")
        self._handler: NotificationHandler | None = None
        self._listener: asyncpg.Connection | None = None
        self._publisher: asyncpg.Connection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._outbox: dict[str, list[str]] = {c: [] for c in _CHANNELS}
        self._outbox_event = asyncio.Event()
        self._connected = asyncio.Event()
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- NotificationBackend -------------------------------------------------------------------
    async def start(self, handler: NotificationHandler) -> None:
        """Listen (in the background, reconnecting as needed) and deliver to ``handler``."""
        self._handler = handler
        self._closed = False
        loop = asyncio.get_running_loop()
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._listen_forever(), name="stent-pg-listen")
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_forever(), name="stent-pg-notify")
        # Wait briefly for the first connection so that a worker that just started hears
        # about work dispatched right after; never block startup on it (polling covers us).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 5.0)

    async def publish(self, channel: str, ids: Sequence[str]) -> None:
        """Queue ids for ``channel``; they are sent within a few milliseconds."""
        if channel not in self._outbox:
            raise ValueError(f"unknown notification channel {channel!r}")
        self._outbox[channel].extend(ids or [""])
        self._outbox_event.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def close(self) -> None:
        """Stop listening and publishing; close both connections."""
        self._closed = True
        for task in (self._runner, self._flusher):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for conn in (self._listener, self._publisher):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)
        self._listener = self._publisher = None
        self._connected.clear()

    # -- listening ----------------------------------------------------------------------------------
    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        name = channel.removeprefix(self._prefix + "_")
        ids = [i for i in payload.split(",") if i]
        handler = self._handler
        if handler is None:
            return
        try:
            result = handler(name, ids)
        except Exception as exc:  # a broken handler must not kill the listener
            log.warning("notification handler failed: %s", exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _listen_forever(self) -> None:
        delay = 0.1
        last_warning = -1e9
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                lost: asyncio.Future[None] = loop.create_future()

                def on_lost(_conn: Any, lost: asyncio.Future[None] = lost) -> None:
                    if not lost.done():
                        lost.set_result(None)

                conn.add_termination_listener(on_lost)
                for c in _CHANNELS:
                    await conn.add_listener(channel_name(self._prefix, c), self._on_notify)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                now = loop.time()
                if now - last_warning >= 30:
                    last_warning = now
                    log.warning("LISTEN connection to %s failed, retrying (polling meanwhile): %s",
                                self._mask(self._dsn), type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            self._listener = conn
            self._connected.set()
            delay = 0.1
            # Anything published while we were away is lost: ask everyone to look again.
            self._on_notify(None, 0, channel_name(self._prefix, "work"), "")
            self._on_notify(None, 0, channel_name(self._prefix, "done"), "")
            try:
                await self._wait_lost(conn, lost)
            finally:
                self._connected.clear()
                self._listener = None
                with contextlib.suppress(Exception):
                    conn.terminate()

    async def _wait_lost(self, conn: asyncpg.Connection, lost: asyncio.Future[None]) -> None:
        # A termination listener fires when asyncpg notices; a periodic no-op query makes sure
        # it notices a half-open connection too.
        while not lost.done() and not self._closed:
            done, _ = await asyncio.wait({lost}, timeout=10.0)
            if done:
                return
            try:
                await asyncio.wait_for(conn.execute("SELECT 1"), 5)
            except Exception:
                return

    # -- publishing ---------------------------------------------------------------------------------
    async def _flush_forever(self) -> None:
        while not self._closed:
            await self._outbox_event.wait()
            await asyncio.sleep(_COALESCE_S)
            self._outbox_event.clear()
            batch = {c: ids for c, ids in self._outbox.items() if ids}
            self._outbox = {c: [] for c in _CHANNELS}
            for channel, ids in batch.items():
                unique = list(dict.fromkeys(ids))
                for i in range(0, len(unique), _MAX_IDS_PER_MESSAGE):
                    await self._notify(channel, ",".join(unique[i:i + _MAX_IDS_PER_MESSAGE]))

    async def _notify(self, channel: str, payload: str) -> None:
        for _ in range(2):
            try:
                if self._publisher is None or self._publisher.is_closed():
                    self._publisher = await asyncpg.connect(self._dsn, timeout=5)
                await self._publisher.execute(
                    "SELECT pg_notify($1, $2)", channel_name(self._prefix, channel), payload
                )
                return
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.debug("NOTIFY failed (%s); polling covers it", type(exc).__name__)
                if self._publisher is not None:
                    with contextlib.suppress(Exception):
                        self._publisher.terminate()
                self._publisher = None

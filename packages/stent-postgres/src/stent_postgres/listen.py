"""``PostgresNotifications``: cross-process wake-ups over PostgreSQL ``LISTEN/NOTIFY``.

Messages carry ids only. Publishing happens after the state change has committed, on a
connection of its own and off the write path: a ``NOTIFY`` inside the writing transaction
would serialise every commit on PostgreSQL's notification queue lock. Ids published within a
few milliseconds of each other share one statement (one ``pg_notify`` per channel, more only
when the ids overflow PostgreSQL's 8000-byte payload limit). Losing a message (a dropped
connection, a restart) costs latency only: the engine's database poll is the safety net, and
every (re)connection of the listener tells the handler to look again (``ids == []``). The
listening connection is re-opened with capped backoff (at most 5 s apart) whenever it drops.

Channels: ``<prefix>_work``, ``<prefix>_done`` and ``<prefix>_cancel``. Wire format: the ids
joined with commas. An empty id (or an id that cannot be sent as is: one
containing a comma, or too long) means "ids unknown"; such a message reaches the handler as
``ids == []``, which the engine treats as "look at everything".

Connections carry ``application_name`` ``stent-listen:<prefix>`` (the listener) and
``stent-notify:<prefix>`` (the publisher), to be told apart in ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import re
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from stent.backend import NotificationHandler

from ._pg_dsn import connect_error, parse_dsn

log = logging.getLogger("stent.notifications.postgres")

#: NOTIFY payloads must be shorter than 8000 bytes (the server's default block size)
_MAX_PAYLOAD_BYTES = 7999
_COALESCE_S = 0.002
#: ``work``: something became claimable; ``done``: tasks finished; ``cancel``: executions
#: being cancelled (their running steps elsewhere stop at once)
_CHANNELS = ("work", "done", "cancel")
#: what a (re)connected listener tells the handler to look at again (messages may be lost)
_LOOK_AGAIN = ("work", "done")
#: reconnection backoff of the listener: first retry at once, then doubling up to the cap
_MIN_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0
#: at most one WARNING per this many seconds (per kind of trouble)
_WARN_EVERY_S = 30.0
#: how often an idle listener checks that its connection is still alive (half-open links)
_PING_EVERY_S = 10.0
_PING_TIMEOUT_S = 5.0
_CONNECT_TIMEOUT_S = 10.0
#: how long start() waits for the first LISTEN connection (then it goes on; polls cover us)
_START_WAIT_S = 5.0
#: bounds on close(): a final flush, then closing the publisher gracefully
_CLOSE_FLUSH_S = 1.0
_CLOSE_CONN_S = 1.0

#: every payload of a batch in one statement (one round trip, one transaction)
_NOTIFY_SQL = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS m(c, p)"


def channel_name(prefix: str, channel: str) -> str:
    """The PostgreSQL channel for ``channel`` under ``prefix`` (an identifier)."""
    return f"{prefix}_{channel}"


def encode_payloads(ids: Sequence[str], limit: int = _MAX_PAYLOAD_BYTES) -> list[str]:
    """Split ``ids`` into comma-joined payloads of at most ``limit`` UTF-8 bytes each.

    Duplicates are dropped (first occurrence kept). An id that cannot travel as is (it
    contains a comma, or is longer than the limit) becomes the empty "ids unknown" marker.
    An empty list gives one empty payload (a bare wake-up).
    """
    payloads: list[str] = []
    current: list[str] = []
    size = -1  # no leading comma
    for raw in dict.fromkeys(ids or [""]):
        i = raw if "," not in raw and len(raw.encode()) <= limit else ""
        n = len(i.encode()) + 1
        if current and size + n > limit:
            payloads.append(",".join(current))
            current, size = [], -1
        current.append(i)
        size += n
    payloads.append(",".join(current))
    return list(dict.fromkeys(payloads))


def decode_payload(payload: str) -> list[str]:
    """The ids in ``payload``; ``[]`` when it holds the "ids unknown" marker (or nothing)."""
    ids = payload.split(",")
    return [] if "" in ids else ids


def _backoff(delay: float) -> float:
    return min(_MAX_BACKOFF_S, max(delay * 2, _MIN_BACKOFF_S))


class _RateLimitedLog:
    """One WARNING per ``_WARN_EVERY_S`` for a kind of trouble; DEBUG for the rest."""

    def __init__(self) -> None:
        self._last: float | None = None
        self.failing = False

    def warn(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        self.failing = True
        if self._last is None or now - self._last >= _WARN_EVERY_S:
            self._last = now
            log.warning(msg, *args)
        else:
            log.debug(msg, *args)


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
        self._parsed_dsn = parse_dsn(dsn)
        self._mask = mask or (lambda _dsn: self._parsed_dsn.masked)
        self._handler: NotificationHandler | None = None
        self._listener: asyncpg.Connection | None = None
        self._publisher: asyncpg.Connection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._outbox: dict[str, list[str]] = {c: [] for c in _CHANNELS}
        self._outbox_event = asyncio.Event()
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listen_trouble = _RateLimitedLog()
        self._handler_trouble = _RateLimitedLog()

    @property
    def application_name(self) -> str:
        """The listener connection's ``application_name`` (``stent-listen:<prefix>``)."""
        return f"stent-listen:{self._prefix}"[:63]

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up right now."""
        return self._connected.is_set()

    @property
    def listener_pid(self) -> int | None:
        """The server process id of the LISTEN connection (None while it is down)."""
        conn = self._listener
        return None if conn is None or conn.is_closed() else int(conn.get_server_pid())

    async def wait_listening(self, timeout: float) -> bool:
        """Wait until the LISTEN connection is up; False if ``timeout`` passed first."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self._connected, self._stopped)]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return self._connected.is_set()

    # -- NotificationBackend -------------------------------------------------------------------
    async def start(self, handler: NotificationHandler) -> None:
        """Listen (in the background, reconnecting as needed) and deliver to ``handler``."""
        self._handler = handler
        self._closed = False
        self._stopped.clear()
        loop = asyncio.get_running_loop()
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._listen_forever(), name="stent-pg-listen")
        self._ensure_flusher()
        # Wait briefly for the first connection so that a worker that just started hears
        # about work dispatched right after; never block startup on it (polling covers us).
        await self.wait_listening(_START_WAIT_S)

    async def publish(self, channel: str, ids: Sequence[str]) -> None:
        """Queue ids for ``channel``; they are sent within a few milliseconds, by a background
        task (the caller never waits for the database)."""
        if channel not in self._outbox:
            raise ValueError(f"unknown notification channel {channel!r}")
        if self._closed:
            return
        self._outbox[channel].extend(ids or [""])
        self._outbox_event.set()
        self._ensure_flusher()

    async def close(self) -> None:
        """Stop listening and publishing; close both connections. Idempotent; ids still
        queued get one short chance (about a second at most) to be sent."""
        self._closed = True
        self._stopped.set()
        self._outbox_event.set()  # the flusher sends what is queued, then stops
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.wait({flusher}, timeout=_CLOSE_FLUSH_S)
        runner, self._runner = self._runner, None
        tasks = [t for t in (runner, flusher, *self._tasks) if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        listener, publisher = self._listener, self._publisher
        self._listener = self._publisher = None
        if listener is not None:
            listener.terminate()
        if publisher is not None:
            try:
                await asyncio.wait_for(publisher.close(), _CLOSE_CONN_S)
            except Exception:
                publisher.terminate()
        self._connected.clear()
        self._outbox = {c: [] for c in _CHANNELS}

    # -- listening ----------------------------------------------------------------------------------
    def _on_notify(self, _conn: Any, pid: int, channel: str, payload: str) -> None:
        publisher = self._publisher
        if publisher is not None and not publisher.is_closed() and pid == publisher.get_server_pid():
            # Our own message: this executor already resolved its waiters and woke its workers
            # when it published; hearing it again would only cost an empty claim.
            return
        self._deliver(channel.removeprefix(self._prefix + "_"), decode_payload(payload))

    def _deliver(self, channel: str, ids: list[str]) -> None:
        handler = self._handler
        if handler is None or self._closed:
            return
        try:
            result = handler(channel, ids)
        except Exception as exc:  # a broken handler must not kill the listener
            self._handler_failed(exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._handler_failed(task.exception())

    def _handler_failed(self, exc: BaseException | None) -> None:
        self._handler_trouble.warn("notification handler failed: %r", exc)

    async def _connect(self, role: str) -> asyncpg.Connection:
        return await asyncpg.connect(
            self._parsed_dsn.url, timeout=_CONNECT_TIMEOUT_S,
            server_settings={"application_name": f"stent-{role}:{self._prefix}"[:63]},
        )

    async def _listen_forever(self) -> None:
        delay = 0.0
        loop = asyncio.get_running_loop()
        while not self._closed:
            if delay:
                # jitter, so that many workers do not all reconnect at the same instant
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            conn: asyncpg.Connection | None = None
            lost: asyncio.Future[None] = loop.create_future()
            try:
                conn = await self._connect("listen")

                def on_lost(_conn: Any, lost: asyncio.Future[None] = lost) -> None:
                    if not lost.done():
                        lost.set_result(None)

                conn.add_termination_listener(on_lost)
                for c in _CHANNELS:
                    await conn.add_listener(channel_name(self._prefix, c), self._on_notify)
            except Exception as exc:  # any failure: retry later, the poll covers us meanwhile
                if conn is not None:
                    conn.terminate()
                # connect_error words it without the password (asyncpg's text may quote it)
                self._listen_trouble.warn("LISTEN failed, retrying (polling meanwhile): %s",
                                          connect_error(self._parsed_dsn, exc))
                delay = _backoff(delay)
                continue
            if self._listen_trouble.failing:
                self._listen_trouble.failing = False
                log.info("LISTEN connection to %s restored", self._mask(self._dsn))
            self._listener = conn
            self._connected.set()
            connected_at = loop.time()
            # Anything published while we were away is lost: ask everyone to look again. (A
            # lost cancel costs latency only: heartbeats find cancelled executions too.)
            for c in _LOOK_AGAIN:
                self._deliver(c, [])
            try:
                await self._wait_lost(conn, lost)
            finally:
                self._connected.clear()
                if self._listener is conn:
                    self._listener = None
                conn.terminate()
            # Reconnect at once after a connection that lived; back off if they keep dying.
            delay = 0.0 if loop.time() - connected_at >= 1.0 else _backoff(delay)
            if not self._closed:
                log.info("LISTEN connection to %s lost; reconnecting", self._mask(self._dsn))

    async def _wait_lost(self, conn: asyncpg.Connection, lost: asyncio.Future[None]) -> None:
        # A termination listener fires when asyncpg notices; a periodic no-op query makes sure
        # it notices a half-open connection too.
        while not lost.done() and not self._closed:
            done, _ = await asyncio.wait({lost}, timeout=_PING_EVERY_S)
            if done:
                return
            try:
                await asyncio.wait_for(conn.execute("SELECT 1"), _PING_TIMEOUT_S)
            except Exception:
                return

    # -- publishing ---------------------------------------------------------------------------------
    def _ensure_flusher(self) -> None:
        if self._closed:
            return
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_forever(), name="stent-pg-notify")

    async def _flush_forever(self) -> None:
        while True:
            await self._outbox_event.wait()
            if not self._closed:
                await asyncio.sleep(_COALESCE_S)  # let ids published together travel together
            self._outbox_event.clear()
            batch = {c: ids for c, ids in self._outbox.items() if ids}
            self._outbox = {c: [] for c in _CHANNELS}
            if batch:
                channels: list[str] = []
                payloads: list[str] = []
                for channel, ids in batch.items():
                    for p in encode_payloads(ids):
                        channels.append(channel_name(self._prefix, channel))
                        payloads.append(p)
                await self._notify(channels, payloads)
            if self._closed:
                return

    async def _notify(self, channels: list[str], payloads: list[str]) -> None:
        """One statement sends every payload; two tries, then the batch is dropped (the
        receivers' poll covers it)."""
        for _ in range(2):
            try:
                if self._publisher is None or self._publisher.is_closed():
                    self._publisher = await self._connect("notify")
                await asyncio.wait_for(
                    self._publisher.execute(_NOTIFY_SQL, channels, payloads), _PING_TIMEOUT_S)
                return
            except Exception as exc:
                log.debug("NOTIFY failed; polling covers it: %s",
                          connect_error(self._parsed_dsn, exc))
                if self._publisher is not None:
                    self._publisher.terminate()
                self._publisher = None

"""``RedisBackend``: Stent's cross-process wake-ups over Redis pub/sub.

One object holds at most two connections, whatever the number of waiters: one subscriber
connection that listens on the engine's channels (``<prefix>:work``, ``<prefix>:done`` and
``<prefix>:cancel``) for every waiter and worker of the process (the engine's completion hub
multiplexes them), and one publisher connection used by a single flusher task. Messages carry ids only. A lone id goes out at
once; ids that keep coming (a fan-out finishing) are sent together every couple of
milliseconds, one message per channel in one round trip.

Nothing here is needed for correctness: a lost message costs latency, because the engine's
database poll is always the safety net. So the design favours never getting in the way:
``publish`` never waits for Redis, ``start`` waits at most a few seconds, outages are retried
in the background with capped backoff, and every (re)subscription is followed by a synthetic
look-again message, since anything published while we were away is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from stent.backend import NotificationHandler

from ._outage import Backoff, OutageLog
from ._urls import mask_url, scrub, secrets_of
from ._wire import (
    CHANNELS,
    LOOK_AGAIN,
    channel_name,
    check_prefix,
    decode_payload,
    encode_payloads,
    merge_ids,
)

log = logging.getLogger("stent.notifications.redis")

#: a zero-argument callable returning a new, unconnected ``redis.asyncio.Redis`` client
ClientFactory = Callable[[], Redis]

#: a silent subscriber connection is PINGed after this long ...
_IDLE_PING_S = 10.0
#: ... and given up as half-open if nothing comes back within this long
_PING_TIMEOUT_S = 5.0
#: how long one read waits before the subscriber checks its watchdog
_READ_SLICE_S = 1.0
#: pending ids per channel before they collapse into one look-again message
_OUTBOX_LIMIT = 100_000
#: how long close() lets the publisher send what was just published
_CLOSE_FLUSH_S = 1.0


@dataclass(frozen=True)
class RedisNotificationStats:
    """Counters of one :class:`RedisBackend` (since it was created).

    Attributes:
        clients_created: Redis clients made (each holds at most one connection).
        subscriptions: times the subscriber (re)subscribed successfully.
        published_messages: ``PUBLISH`` commands that reached Redis.
        published_ids: ids carried by those messages.
        received_messages: messages received on this deployment's channels.
        received_ids: ids carried by those messages.
    """

    clients_created: int = 0
    subscriptions: int = 0
    published_messages: int = 0
    published_ids: int = 0
    received_messages: int = 0
    received_ids: int = 0


class RedisBackend:
    """A Stent ``NotificationBackend`` on Redis pub/sub.

    Pass it to an executor: ``Stent(backend, notification_backend=RedisBackend(url))``, or
    resolve it lazily as ``Stent.notifications.RedisBackend(url)``. Nothing connects until the
    executor starts it.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` or
            ``unix://...``; the password never appears in logs or errors.
        channel_prefix: channels are ``<prefix>:work``, ``<prefix>:done`` and
            ``<prefix>:cancel``; give deployments that share a Redis different prefixes so
            they do not wake each other.
        client_name: the ``CLIENT SETNAME`` of both connections (seen in ``CLIENT LIST``).
        client_factory: makes the Redis clients instead of ``redis.asyncio.Redis.from_url``
            (for tests: ``lambda: fakeredis.aioredis.FakeRedis(server=server)``). It is called
            once per connection the backend opens; a client is used for one connection at a
            time and closed when that connection fails.
        connect_timeout: seconds allowed for connecting, subscribing and one publish.
        coalesce_s: while ids keep coming, they go out at most once per this window (one
            message per channel for all of them); a lone id after a quiet spell goes at once.
        max_message_bytes: longer id lists are split into several messages.

    Raises:
        ValueError: an unusable URL (shown masked) or channel prefix.
    """

    def __init__(
        self,
        url: str,
        *,
        channel_prefix: str = "stent",
        client_name: str = "stent",
        client_factory: ClientFactory | None = None,
        connect_timeout: float = 5.0,
        coalesce_s: float = 0.002,
        max_message_bytes: int = 32_768,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"invalid Redis URL {url!r}: expected redis://host:port")
        self._secrets = secrets_of(url)
        self.url_masked = mask_url(url)
        if client_factory is None:
            try:
                parse_url(url)
            except ValueError as exc:
                raise ValueError(f"invalid Redis URL {self.url_masked}: "
                                 f"{scrub(str(exc), self._secrets)}") from None
        self._url = url
        self.channel_prefix = check_prefix(channel_prefix)
        self._client_name = client_name
        self._factory = client_factory or self._default_client
        self._connect_timeout = float(connect_timeout)
        self._coalesce_s = float(coalesce_s)
        self._max_message_bytes = int(max_message_bytes)
        self._channels = {channel_name(self.channel_prefix, c): c for c in CHANNELS}
        self._handler: NotificationHandler | None = None
        self._closed = False
        self._outage = OutageLog(log, self.url_masked)
        self._counts: dict[str, int] = {f.name: 0 for f in fields(RedisNotificationStats)}
        self._handler_warned_at: float | None = None
        # Everything below belongs to one event loop; _bind_loop resets it for a new one.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._publisher: Redis | None = None
        self._outbox: dict[str, dict[str, None]] = {c: {} for c in CHANNELS}
        self._outbox_ready = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._handler_tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"RedisBackend({self.url_masked!r}, channel_prefix={self.channel_prefix!r})"

    @property
    def stats(self) -> RedisNotificationStats:
        """A snapshot of this backend's counters."""
        return RedisNotificationStats(**self._counts)

    @property
    def subscribed(self) -> bool:
        """Whether the subscriber is listening right now."""
        return self._subscribed.is_set()

    # -- NotificationBackend ---------------------------------------------------------------------
    async def start(self, handler: NotificationHandler) -> None:
        """Subscribe in the background (reconnecting as needed) and deliver to ``handler``.

        Waits for the first subscription attempt (at most 2 s), so that a waiter that just
        started hears of a completion that comes right after; an unreachable Redis does not
        hold it up beyond that (polling covers the gap, and once subscribed the backend asks
        the engine to look again).

        Args:
            handler: ``(channel, ids) -> awaitable | None``; ``channel`` is ``"work"``,
                ``"done"`` or ``"cancel"``; ``ids == []`` means "look again" (ids unknown).
        """
        self._bind_loop()
        self._handler = handler
        self._closed = False
        if self._listener is None or self._listener.done():
            self._first_attempt.clear()
            self._listener = asyncio.get_running_loop().create_task(
                self._listen_forever(), name="stent-redis-subscriber")
        self._ensure_flusher()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), min(self._connect_timeout, 2.0))

    async def publish(self, channel: str, ids: Sequence[str]) -> None:
        """Queue ids for ``channel``; they are sent within a few milliseconds.

        Never waits for Redis. While Redis is down, pending ids are kept (bounded) and sent
        once it is back; after :meth:`close` they are dropped.

        Args:
            channel: ``"work"``, ``"done"`` or ``"cancel"``.
            ids: task ids; ``[]`` asks every listener to look again.

        Raises:
            ValueError: an unknown channel.
        """
        if channel not in self._outbox:
            raise ValueError(f"unknown notification channel {channel!r}: expected one of "
                             f"{', '.join(CHANNELS)}")
        if self._closed:
            return
        self._bind_loop()
        merge_ids(self._outbox[channel], ids, _OUTBOX_LIMIT)
        self._outbox_ready.set()
        self._ensure_flusher()

    async def close(self) -> None:
        """Stop listening and publishing and close both connections.

        Idempotent. Takes milliseconds, and a few seconds at worst when Redis stops answering
        mid-command (every step is bounded). Ids published just before are sent if Redis is
        reachable."""
        self._closed = True
        if self._loop is not None and self._loop is not _running_loop():
            self._forget_loop()  # that loop's tasks and sockets cannot be awaited from here
            return
        # What was published in the last couple of milliseconds is still worth one round trip:
        # the flusher sends it and stops. It is the only user of the publisher connection, so
        # it is also the one to finish with it (cancelling it mid-command would leave the
        # connection unusable, and a last flush from here would open another one).
        flusher = self._flusher
        if flusher is not None and not flusher.done() and "publisher" not in self._outage.down:
            self._outbox_ready.set()
            await asyncio.wait({flusher}, timeout=_CLOSE_FLUSH_S)
        tasks = [t for t in (self._listener, flusher) if t is not None and not t.done()]
        tasks += [t for t in self._handler_tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await _close_client(publisher)
        self._listener = self._flusher = None
        self._handler_tasks.clear()
        for pending in self._outbox.values():
            pending.clear()
        self._subscribed.clear()

    # -- per-loop state ----------------------------------------------------------------------------
    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._forget_loop()
            self._loop = loop

    def _forget_loop(self) -> None:
        # Used when an executor outlives its event loop (asyncio.run in tests, say): the old
        # loop's tasks are finished or unreachable, and its sockets cannot be reused here.
        self._loop = None
        self._listener = self._flusher = None
        self._publisher = None
        self._handler_tasks = set()
        self._outbox_ready = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._first_attempt = asyncio.Event()

    def _default_client(self) -> Redis:
        # retry=0: redis-py's own retries would stall a publish for seconds during an outage;
        # we retry ourselves, in the background. max_connections=1: a client is one connection.
        return Redis.from_url(
            self._url,
            client_name=self._client_name,
            max_connections=1,
            socket_connect_timeout=self._connect_timeout,
            socket_timeout=self._connect_timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )

    def _new_client(self) -> Redis:
        client = self._factory()
        self._counts["clients_created"] += 1
        return client

    def _reason(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return scrub(text, self._secrets)

    # -- subscribing ---------------------------------------------------------------------------------
    async def _listen_forever(self) -> None:
        backoff = Backoff()
        while not self._closed:
            client: Redis | None = None
            pubsub: PubSub | None = None
            try:
                client = self._new_client()
                pubsub = client.pubsub()
                await asyncio.wait_for(self._subscribe(pubsub), self._connect_timeout)
                self._subscribed.set()
                self._first_attempt.set()
                backoff.reset()
                self._outage.recovered("subscriber")
                self._counts["subscriptions"] += 1
                log.debug("subscribed to %s at %s", ", ".join(self._channels), self.url_masked)
                # Whatever was published while we were not subscribed is lost (Redis pub/sub
                # keeps nothing): ask the engine to look again at the database, once per
                # channel, now that we are listening and will not miss what comes next.
                for channel in LOOK_AGAIN:
                    self._deliver(channel, [])
                await self._read_until_lost(pubsub)
            except Exception as exc:  # any failure: drop the connection and try again later
                self._subscribed.clear()
                self._first_attempt.set()
                if not self._closed:
                    self._outage.failed("subscriber", self._reason(exc))
            finally:
                # Runs on cancellation (close) too. Both calls are bounded: close is fast.
                self._subscribed.clear()
                if pubsub is not None:
                    close_pubsub: Callable[[], Awaitable[None]] = pubsub.aclose  # untyped upstream
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(close_pubsub(), 1.0)
                if client is not None:
                    await _close_client(client)
            if not self._closed:
                await asyncio.sleep(backoff.next())

    async def _subscribe(self, pubsub: PubSub) -> None:
        await pubsub.subscribe(*self._channels)
        # Redis confirms each channel; only then is a message published elsewhere sure to
        # reach us, and only then may the look-again messages go out.
        confirmed: set[str] = set()
        while len(confirmed) < len(self._channels):
            message = await pubsub.get_message(timeout=_READ_SLICE_S)
            if message is None:
                continue
            if message["type"] == "subscribe":
                confirmed.add(_text(message["channel"]))
            elif message["type"] == "message":
                self._on_message(message)

    async def _read_until_lost(self, pubsub: PubSub) -> None:
        """Deliver messages until the connection fails (raises) or the backend closes.

        A connection that dies silently (a half-open TCP connection, a paused VM) raises
        nothing: reads just time out. So a connection quiet for ``_IDLE_PING_S`` is PINGed,
        and declared lost if nothing at all comes back within ``_PING_TIMEOUT_S``.
        """
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        ping_sent: float | None = None
        while not self._closed:
            message = await pubsub.get_message(timeout=_READ_SLICE_S)
            now = loop.time()
            if message is not None:
                last_heard, ping_sent = now, None
                kind = message["type"]
                if kind == "message":
                    self._on_message(message)
                elif kind == "unsubscribe":
                    raise ConnectionError("unsubscribed by the server")
                continue
            if ping_sent is not None:
                if now - ping_sent > _PING_TIMEOUT_S:
                    raise TimeoutError(f"no answer to PING within {_PING_TIMEOUT_S:.0f} s")
            elif now - last_heard > _IDLE_PING_S:
                await pubsub.ping()
                ping_sent = now

    def _on_message(self, message: dict[str, Any]) -> None:
        channel = self._channels.get(_text(message.get("channel")))
        if channel is None:
            return
        # Anyone may publish on these channels; whatever arrives must not break the reader
        # (undecodable bytes are replaced: such an id matches nothing, which costs nothing).
        ids = decode_payload(_text(message.get("data", b"")))
        self._counts["received_messages"] += 1
        self._counts["received_ids"] += len(ids)
        self._deliver(channel, ids)

    def _deliver(self, channel: str, ids: list[str]) -> None:
        """Hand a message to the handler. Nothing it does can stop the subscriber: exceptions
        are logged, and an awaitable runs as a task of its own so a slow handler does not
        hold up reading."""
        handler = self._handler
        if handler is None:
            return
        try:
            result = handler(channel, ids)
        except Exception as exc:
            self._handler_failed(exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[Any]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._handler_failed(task.exception())

    def _handler_failed(self, exc: BaseException | None) -> None:
        now = time.monotonic()
        if self._handler_warned_at is None or now - self._handler_warned_at >= 30.0:
            self._handler_warned_at = now
            log.warning("notification handler raised (the subscriber carries on): %r", exc)

    # -- publishing ----------------------------------------------------------------------------------
    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_forever(), name="stent-redis-publisher")

    async def _flush_forever(self) -> None:
        # The only task that touches the publisher connection, so commands on it never
        # interleave and one connection is always enough.
        backoff = Backoff(initial=0.05)
        loop = asyncio.get_running_loop()
        last_sent = -1e9
        while True:
            await self._outbox_ready.wait()
            if not self._closing():
                # Coalescing without taxing the lone message: after a quiet spell the first
                # ids go out at once (after one turn of the loop, so that ids published in the
                # same turn join them); while a burst lasts (a batch of completions, a
                # fan-out), at most one message per channel goes out every coalesce_s.
                quiet = loop.time() - last_sent
                await asyncio.sleep(max(0.0, self._coalesce_s - quiet))
            last_sent = loop.time()
            try:
                await asyncio.wait_for(self._flush_once(), self._connect_timeout)
            except Exception as exc:  # the ids went back to the outbox; try again later
                if self._closing():
                    return
                self._outage.failed("publisher", self._reason(exc))
                publisher, self._publisher = self._publisher, None
                if publisher is not None:
                    await _close_client(publisher)
                await asyncio.sleep(backoff.next())
                self._outbox_ready.set()
            else:
                backoff.reset()
                self._outage.recovered("publisher")
            if self._closing():
                return

    def _closing(self) -> bool:
        # a method, not the attribute: close() flips it while this task is suspended
        return self._closed

    async def _flush_once(self) -> None:
        """Send everything pending in one pipelined round trip; on failure put it back."""
        self._outbox_ready.clear()
        batch = {c: ids for c, ids in self._outbox.items() if ids}
        if not batch:
            return
        self._outbox = {c: {} for c in CHANNELS}
        messages: list[tuple[str, str, int]] = []
        for channel, pending in batch.items():
            ids = [i for i in pending if i]  # real ids make the look-again marker redundant
            for payload in encode_payloads(ids, self._max_message_bytes):
                messages.append((channel_name(self.channel_prefix, channel), payload,
                                 payload.count(",") + 1 if payload else 0))
        try:
            if self._publisher is None:
                self._publisher = self._new_client()
            async with self._publisher.pipeline(transaction=False) as pipe:
                for name, payload, _ in messages:
                    pipe.publish(name, payload)
                await pipe.execute()
        except BaseException:
            # Keep them (merged with newer ones, bounded) for the next attempt. A partly sent
            # batch may be sent twice: duplicates only cost a wasted look.
            for channel, pending in batch.items():
                merge_ids(self._outbox[channel], [i for i in pending if i], _OUTBOX_LIMIT)
            raise
        self._counts["published_messages"] += len(messages)
        self._counts["published_ids"] += sum(n for *_, n in messages)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _close_client(client: Redis) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.aclose(), 1.0)

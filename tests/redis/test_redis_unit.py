"""RedisBackend on fakeredis: delivery, coalescing, isolation, failures and closing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis
from stent import Stent
from stent_redis import RedisBackend, _backend
from stent_redis._outage import Backoff, OutageLog
from stent_redis._wire import decode_payload, encode_id, encode_payloads
from stent_testing import InMemoryBackend

from ..engine.helpers import start_worker, stop_worker
from . import redis_app
from .redis_server import free_port

LOGGER = "stent.notifications.redis"
Message = tuple[str, list[str]]


class Inbox:
    """A handler that records messages, and waits for them."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Event()

    def __call__(self, channel: str, ids: Sequence[str]) -> None:
        self.messages.append((channel, list(ids)))
        self._changed.set()

    def ids(self, channel: str) -> list[str]:
        return [i for c, ids in self.messages if c == channel for i in ids]

    def of(self, channel: str) -> list[list[str]]:
        return [ids for c, ids in self.messages if c == channel]

    async def until(self, predicate: Callable[[], object], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def factory(server: fakeredis.FakeServer, calls: list[Redis] | None = None) -> Callable[[], Redis]:
    def make() -> Redis:
        client = fakeredis.aioredis.FakeRedis(server=server)
        if calls is not None:
            calls.append(client)
        return client
    return make


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
async def pair(server: fakeredis.FakeServer) -> AsyncIterator[tuple[RedisBackend, RedisBackend,
                                                                    Inbox]]:
    """A publishing backend and a listening one (with its inbox), on one fake server."""
    sender = RedisBackend("redis://fake", client_factory=factory(server))
    receiver = RedisBackend("redis://fake", client_factory=factory(server))
    inbox = Inbox()
    await sender.start(Inbox())
    await receiver.start(inbox)
    yield sender, receiver, inbox
    await sender.close()
    await receiver.close()


async def test_start_subscribes_and_asks_to_look_again(pair: Any) -> None:
    _, receiver, inbox = pair
    assert receiver.subscribed
    await inbox.until(lambda: len(inbox.messages) >= 2)
    assert inbox.messages[:2] == [("work", []), ("done", [])]


async def test_published_ids_reach_subscribers_in_another_backend(pair: Any) -> None:
    sender, _, inbox = pair
    await sender.publish("done", ["t1", "t2"])
    await sender.publish("work", ["t3"])
    await inbox.until(lambda: inbox.ids("done") and inbox.ids("work"))
    assert inbox.ids("done") == ["t1", "t2"]
    assert inbox.ids("work") == ["t3"]


async def test_empty_publish_is_a_look_again_message(pair: Any) -> None:
    sender, _, inbox = pair
    await inbox.until(lambda: len(inbox.messages) >= 2)
    await sender.publish("work", [])
    await inbox.until(lambda: len(inbox.of("work")) >= 2)
    assert inbox.of("work") == [[], []]


async def test_ids_published_in_a_burst_share_one_message(pair: Any) -> None:
    sender, receiver, inbox = pair
    ids = [f"{i:032x}" for i in range(500)]
    for i in ids:  # one call per id, as the engine publishes one per finished task
        await sender.publish("done", [i])
    await sender.publish("done", [ids[0]])  # a duplicate inside the window
    await inbox.until(lambda: len(inbox.ids("done")) >= 500)
    assert inbox.ids("done") == ids
    await asyncio.sleep(0.01)  # the sender counts once its round trip has returned
    assert sender.stats.published_messages == 1
    assert receiver.stats.received_ids == 500


async def test_long_id_lists_are_split_into_several_messages(server: fakeredis.FakeServer) -> None:
    sender = RedisBackend("redis://fake", client_factory=factory(server), max_message_bytes=200)
    receiver = RedisBackend("redis://fake", client_factory=factory(server))
    inbox = Inbox()
    await receiver.start(inbox)
    ids = [f"{i:032x}" for i in range(50)]
    await sender.publish("done", ids)
    await inbox.until(lambda: len(inbox.ids("done")) >= 50)
    assert inbox.ids("done") == ids
    await asyncio.sleep(0.01)
    parts = [m for m in inbox.of("done") if m]  # without the look-again from start()
    assert sender.stats.published_messages == len(parts) >= 9
    assert all(len(",".join(m)) <= 200 for m in parts)
    await sender.close()
    await receiver.close()


async def test_ids_with_commas_and_percent_signs_round_trip(pair: Any) -> None:
    sender, _, inbox = pair
    ids = ["a,b", "50%", "%2C", "%25,", "plain"]
    await sender.publish("done", ids)
    await inbox.until(lambda: inbox.ids("done"))
    assert inbox.ids("done") == ids


def test_payload_encoding_is_exact_and_bounded() -> None:
    ids = ["x" * 10, "a,b%c", "y" * 30]
    payloads = list(encode_payloads(ids, 25))
    assert [i for p in payloads for i in decode_payload(p)] == ids
    assert list(encode_payloads([], 25)) == [""]
    assert decode_payload("") == []
    assert encode_id("a,b%") == "a%2Cb%25"


async def test_deployments_with_different_prefixes_do_not_wake_each_other(
    server: fakeredis.FakeServer,
) -> None:
    alpha = RedisBackend("redis://fake", channel_prefix="alpha", client_factory=factory(server))
    beta = RedisBackend("redis://fake", channel_prefix="beta", client_factory=factory(server))
    alpha_inbox, beta_inbox = Inbox(), Inbox()
    await alpha.start(alpha_inbox)
    await beta.start(beta_inbox)
    await alpha.publish("done", ["from-alpha"])
    await beta.publish("done", ["from-beta"])
    await alpha_inbox.until(lambda: alpha_inbox.ids("done"))
    await beta_inbox.until(lambda: beta_inbox.ids("done"))
    await asyncio.sleep(0.05)
    assert alpha_inbox.ids("done") == ["from-alpha"]
    assert beta_inbox.ids("done") == ["from-beta"]
    await alpha.close()
    await beta.close()


async def test_a_raising_handler_never_stops_the_subscriber(
    server: fakeredis.FakeServer, caplog: pytest.LogCaptureFixture,
) -> None:
    sender = RedisBackend("redis://fake", client_factory=factory(server))
    receiver = RedisBackend("redis://fake", client_factory=factory(server))
    seen: list[str] = []

    def handler(channel: str, ids: Sequence[str]) -> Any:
        seen.extend(ids)
        if "sync-boom" in ids:
            raise RuntimeError("sync boom")
        if "async-boom" in ids:
            async def fail() -> None:
                raise RuntimeError("async boom")
            return fail()
        return None

    caplog.set_level(logging.WARNING, LOGGER)
    await receiver.start(handler)
    for task_id in ("sync-boom", "async-boom", "after"):
        await sender.publish("done", [task_id])
        await asyncio.sleep(0.02)  # one message each
    async with asyncio.timeout(3):
        while "after" not in seen:
            await asyncio.sleep(0.01)
    assert seen == ["sync-boom", "async-boom", "after"]
    assert receiver.subscribed
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1 and "sync boom" in warnings[0].getMessage()  # rate-limited
    await sender.close()
    await receiver.close()


async def test_close_is_idempotent_fast_and_final(pair: Any) -> None:
    sender, receiver, inbox = pair
    t0 = time.perf_counter()
    await receiver.close()
    await receiver.close()
    assert time.perf_counter() - t0 < 0.5
    assert not receiver.subscribed
    before = len(inbox.messages)
    await sender.publish("done", ["late"])
    await receiver.publish("done", ["dropped"])  # publishing after close is a silent no-op
    await asyncio.sleep(0.05)
    assert len(inbox.messages) == before


async def test_close_sends_what_was_just_published(pair: Any) -> None:
    sender, _, inbox = pair
    await sender.publish("done", ["last-words"])
    await sender.close()  # within the coalescing window
    await inbox.until(lambda: inbox.ids("done"))
    assert inbox.ids("done") == ["last-words"]


async def test_close_never_started_backend() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    await backend.close()
    await backend.close()


async def test_a_backend_can_start_again_after_close(pair: Any) -> None:
    sender, receiver, _ = pair
    await receiver.close()
    inbox = Inbox()
    await receiver.start(inbox)
    await sender.publish("done", ["again"])
    await inbox.until(lambda: inbox.ids("done"))
    assert inbox.ids("done") == ["again"]


async def test_subscriber_reconnects_resubscribes_and_asks_to_look_again(
    pair: Any, server: fakeredis.FakeServer, caplog: pytest.LogCaptureFixture,
) -> None:
    sender, receiver, inbox = pair
    caplog.set_level(logging.INFO, LOGGER)
    await inbox.until(lambda: len(inbox.messages) >= 2)
    server.connected = False
    async with asyncio.timeout(3):
        while receiver.subscribed:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    server.connected = True
    async with asyncio.timeout(8):
        while receiver.stats.subscriptions < 2:
            await asyncio.sleep(0.01)
    # anything published meanwhile is lost to it, so it asks the engine to look again
    await inbox.until(lambda: len(inbox.messages) >= 4)
    assert inbox.messages[:4] == [("work", []), ("done", []), ("work", []), ("done", [])]
    records = [r for r in caplog.records if r.name == LOGGER]
    # one WARNING per backend object (both subscribers lost the connection), no more
    assert [r.levelname for r in records if r.levelname == "WARNING"] == ["WARNING"] * 2
    assert any(r.levelname == "INFO" and "subscriber connected again" in r.getMessage()
               for r in records)
    await sender.publish("work", ["after"])
    await inbox.until(lambda: "after" in inbox.ids("work"))


async def test_ids_published_while_redis_is_down_are_sent_once_it_is_back(
    server: fakeredis.FakeServer,
) -> None:
    down = True

    def flaky() -> Redis:
        if down:
            raise ConnectionError("Connection refused")
        return fakeredis.aioredis.FakeRedis(server=server)

    sender = RedisBackend("redis://fake", client_factory=flaky)
    receiver = RedisBackend("redis://fake", client_factory=factory(server))
    inbox = Inbox()
    await receiver.start(inbox)
    await sender.publish("done", ["while-down"])
    await asyncio.sleep(0.3)
    assert not inbox.ids("done")
    down = False
    await inbox.until(lambda: inbox.ids("done"), timeout=5)
    assert inbox.ids("done") == ["while-down"]
    await sender.close()
    await receiver.close()


class _DeafPubSub:
    """Wraps a pub/sub object so that PINGs go nowhere: a half-open connection."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def ping(self, message: object = None) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_silent_connection_is_pinged_and_replaced(
    server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_backend, "_READ_SLICE_S", 0.02)
    monkeypatch.setattr(_backend, "_IDLE_PING_S", 0.05)
    monkeypatch.setattr(_backend, "_PING_TIMEOUT_S", 0.1)

    def deaf_client() -> Redis:
        client = fakeredis.aioredis.FakeRedis(server=server)
        plain = client.pubsub
        client.pubsub = lambda **kw: _DeafPubSub(plain(**kw))  # type: ignore[method-assign,assignment]
        return client

    backend = RedisBackend("redis://fake", client_factory=deaf_client)
    await backend.start(Inbox())
    async with asyncio.timeout(5):
        while backend.stats.subscriptions < 2:
            await asyncio.sleep(0.02)
    await backend.close()


async def test_one_client_per_connection_and_two_in_all(server: fakeredis.FakeServer) -> None:
    made: list[Redis] = []
    backend = RedisBackend("redis://fake", client_factory=factory(server, made))
    inbox = Inbox()
    await backend.start(inbox)
    for i in range(1000):
        await backend.publish("done", [str(i)])
        if i % 100 == 0:
            await asyncio.sleep(0.005)
    await inbox.until(lambda: len(inbox.ids("done")) == 1000)
    assert len(made) == backend.stats.clients_created == 2
    await backend.close()


async def test_start_does_not_hang_when_redis_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = RedisBackend(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    caplog.set_level(logging.DEBUG, LOGGER)
    t0 = time.perf_counter()
    await backend.start(Inbox())
    assert time.perf_counter() - t0 < 2.0
    assert not backend.subscribed
    await backend.publish("work", [])  # never raises, never waits
    await asyncio.sleep(0.3)
    await backend.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "unavailable at redis://:***@127.0.0.1" in text
    assert "hunter2" not in text


async def test_the_password_never_appears_in_errors_logs_or_repr(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "redis://admin:s3cr%40t@cache.internal:6380/2"

    def leaky() -> Redis:
        raise ConnectionError(f"cannot connect to {url} with password s3cr@t")

    backend = RedisBackend(url, client_factory=leaky)
    assert "s3cr" not in repr(backend) and "admin:***@cache.internal:6380/2" in repr(backend)
    caplog.set_level(logging.DEBUG, LOGGER)
    await backend.start(Inbox())
    await backend.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "cannot connect" in text and "s3cr" not in text
    with pytest.raises(ValueError) as err:
        RedisBackend("http://user:pa55word@host/")
    assert "pa55word" not in str(err.value) and "user:***@host" in str(err.value)


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="channel_prefix"):
        RedisBackend("redis://localhost", channel_prefix="has space")
    with pytest.raises(ValueError, match="Redis URL"):
        RedisBackend("")


async def test_unknown_channel_is_refused() -> None:
    backend = RedisBackend("redis://localhost")
    with pytest.raises(ValueError, match="unknown notification channel"):
        await backend.publish("other", ["x"])


def test_outage_log_warns_once_per_30_seconds_and_informs_on_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    outage = OutageLog(logging.getLogger(LOGGER), "redis://x", clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, LOGGER)
    for _ in range(120):  # a two-minute outage, both parts failing every half second
        outage.failed("subscriber", "refused")
        outage.failed("publisher", "refused")
        now[0] += 0.5
    outage.recovered("subscriber")
    outage.recovered("subscriber")
    levels = [r.levelname for r in caplog.records if r.levelname != "DEBUG"]
    assert levels == ["WARNING"] * 2 + ["INFO"]  # at 0 s and 30 s; 60 s is past the end
    assert outage.down == {"publisher"}


def test_backoff_is_capped_at_five_seconds() -> None:
    backoff = Backoff()
    delays = [backoff.next() for _ in range(30)]
    assert delays[0] <= 0.15 and max(delays) <= 5.0 and delays[-1] >= 4.0
    backoff.reset()
    assert backoff.next() <= 0.15


def test_stent_notifications_namespace_resolves_redis_backend() -> None:
    assert Stent.notifications.RedisBackend is RedisBackend


async def test_executors_in_one_process_wake_each_other_through_fake_redis(
    server: fakeredis.FakeServer,
) -> None:
    # A dispatching executor and a worker that polls only every 30 s, sharing storage: the
    # worker starts the work within milliseconds only if the wake-up went through Redis.
    storage = InMemoryBackend()
    client = Stent(storage, notification_backend=RedisBackend(
        "redis://fake", client_factory=factory(server)), poll_min_interval=10,
        poll_max_interval=30)
    worker_side = Stent(storage, notification_backend=RedisBackend(
        "redis://fake", client_factory=factory(server)))
    task = await start_worker(worker_side, poll_interval=30)
    try:
        await asyncio.sleep(0.1)  # the worker's first poll is over; now it sleeps 30 s
        t0 = time.perf_counter()
        eid = await client.dispatch(redis_app.chain, 1, 2)
        result = await asyncio.wait_for(client.wait_for(eid), 5)
        assert result.value == 3
        assert time.perf_counter() - t0 < 1.0
    finally:
        await stop_worker(worker_side, task)
        await client.shutdown()


def test_a_backend_outlives_its_event_loop() -> None:
    # An executor may be used under several asyncio.run calls (scripts, tests): each new loop
    # gets fresh connections and tasks.
    server = fakeredis.FakeServer()
    backend = RedisBackend("redis://fake", client_factory=factory(server))

    async def round_trip(tag: str) -> None:
        inbox = Inbox()
        sender = RedisBackend("redis://fake", client_factory=factory(server))
        await backend.start(inbox)
        await sender.publish("done", [tag])
        await inbox.until(lambda: tag in inbox.ids("done"))
        await sender.close()

    asyncio.run(round_trip("first"))  # not closed: the loop ends under it
    asyncio.run(round_trip("second"))
    asyncio.run(backend.close())
    assert backend.stats.subscriptions == 2


async def test_cancel_messages_travel_on_their_own_channel(pair: Any) -> None:
    sender, _, inbox = pair
    await sender.publish("cancel", ["exec-1"])
    await inbox.until(lambda: inbox.ids("cancel"))
    assert inbox.ids("cancel") == ["exec-1"]
    assert [] not in inbox.of("cancel")  # no look-again on cancel: it would mean nothing


async def test_foreign_messages_on_our_channels_do_not_break_the_subscriber(
    pair: Any, server: fakeredis.FakeServer,
) -> None:
    _, receiver, inbox = pair
    stranger = fakeredis.aioredis.FakeRedis(server=server)
    await stranger.publish("stent:done", b"\xff\xfe,,%zz")
    await stranger.publish("stent:other", b"ignored")
    await inbox.until(lambda: len(inbox.of("done")) >= 2)
    await stranger.publish("stent:done", b"fine")
    await inbox.until(lambda: "fine" in inbox.ids("done"))
    assert receiver.stats.subscriptions == 1
    await stranger.aclose()

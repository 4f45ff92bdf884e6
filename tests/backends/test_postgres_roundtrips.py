"""PostgresBackend's cost in round trips: every engine operation is one.

Measured, not assumed: the backend talks to PostgreSQL through a proxy that holds every
reply for DELAY seconds, so a call takes about (round trips x DELAY). asyncpg prepares a
statement once per connection (one extra round trip, the warm-up below) and then sends
Bind/Execute/Sync together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from stent.records import Lease
from stent_postgres import PostgresBackend
from stent_testing.conformance.builders import T0, at, claim_filter, new_execution, new_task
from stent_testing.pg import create_test_backend, dispose_test_backend, postgres_test_dsn

DELAY = 0.05


class SlowProxy:
    """A TCP proxy to the test server that delays every reply by ``delay`` seconds."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.host, self.port, self.delay = host, port, delay
        self.server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        for task in (self._pipe(reader, up_writer, 0.0),
                     self._pipe(up_reader, writer, self.delay)):
            pipe = asyncio.ensure_future(task)
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    delay: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await src.read(65536):
                if delay:
                    # Each chunk is released DELAY after it arrived, in order.
                    loop.call_later(delay, dst.write, data)
                else:
                    dst.write(data)
        except (ConnectionError, OSError):
            pass
        finally:
            if delay:
                await asyncio.sleep(delay)
            dst.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for pipe in list(self._pipes):
            pipe.cancel()


@pytest.fixture
async def slow() -> AsyncIterator[PostgresBackend]:
    fast = await create_test_backend(min_pool_size=1, max_pool_size=1)
    parts = urlsplit(postgres_test_dsn())
    proxy = SlowProxy(parts.hostname or "127.0.0.1", parts.port or 5432, DELAY)
    port = await proxy.start()
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    dsn = urlunsplit(parts._replace(netloc=netloc))
    backend = PostgresBackend(dsn, schema=fast.schema, min_pool_size=1, max_pool_size=1)
    try:
        yield backend
    finally:
        await backend.close()
        await proxy.stop()
        await dispose_test_backend(fast)


async def round_trips(call: Callable[[], Awaitable[Any]]) -> float:
    """How many round trips ``call`` took (elapsed time in units of DELAY)."""
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) / DELAY


async def test_every_hot_path_call_is_one_round_trip(slow: PostgresBackend) -> None:
    # Warm-up: one of each, so that every statement is prepared on the (single) connection.
    news = [new_execution() for _ in range(8)]
    await slow.create_execution(news[0], T0)
    (root,) = await slow.claim("w", claim_filter(), 1, T0, at(600))
    lease = Lease("w", at(600))
    step, _ = await slow.create_step(root.id, root.fence, new_task(parent_id=root.id, seq=0),
                                     at(1), lease)
    await slow.complete_task(step.id, step.fence, b"1", at(1))
    for seq in (1, 2, 3):
        await slow.create_step(root.id, root.fence, new_task(parent_id=root.id, seq=seq),
                               at(1), lease)
    tasks = await slow.list_tasks_for_execution(root.execution_id)
    await slow.fail_task(tasks[2].id, 1, b"e", at(1), "exhausted")
    await slow.retry_task(tasks[3].id, 1, b"e", at(2), at(1))
    await slow.renew_leases("w", [(root.id, root.fence)], at(700))
    await slow.load_steps(root.id, 1)
    await slow.get_outcomes([step.id])
    assert await slow.suspend_task(root.id, root.fence + 99, [], at(1)) is False  # stale

    measured: dict[str, float] = {}

    async def measure(name: str, call: Callable[[], Awaitable[Any]]) -> None:
        before = slow.stats["statements"]
        measured[name] = await round_trips(call)
        assert slow.stats["statements"] - before == 1, name

    await measure("create_execution", lambda: slow.create_execution(news[1], at(2)))
    await measure("claim", lambda: slow.claim("w", claim_filter(), 5, at(2), at(600)))
    for seq in range(10, 15):
        new = new_task(parent_id=root.id, seq=seq)
        await measure("create_step(lease)", lambda new=new: slow.create_step(  # type: ignore[misc]
            root.id, root.fence, new, at(3), lease))
    children = [t for t in await slow.list_tasks_for_execution(root.execution_id)
                if t.seq >= 10]
    for child in children[:3]:
        await measure("complete_task",
                      lambda child=child: slow.complete_task(  # type: ignore[misc]
                          child.id, child.fence, b"1", at(4)))
    await measure("fail_task", lambda: slow.fail_task(children[3].id, 1, b"e", at(4), None))
    await measure("retry_task",
                  lambda: slow.retry_task(children[4].id, 1, b"e", at(5), at(4)))
    await measure("renew_leases", lambda: slow.renew_leases("w", [(root.id, root.fence)],
                                                             at(800)))
    await measure("load_steps", lambda: slow.load_steps(root.id, 1))
    await measure("get_outcomes", lambda: slow.get_outcomes([c.id for c in children]))
    await measure("suspend_task", lambda: slow.suspend_task(root.id, root.fence,
                                                            [children[4].id], at(6)))
    # Each call is one statement (checked exactly above). The time, in units of the proxy's
    # delay, shows it is also one round trip; a loaded machine can stretch a single reply, so
    # judge the typical call, and let no call come near three round trips.
    values = sorted(measured.values())
    assert values[len(values) // 2] < 1.5, measured
    assert values[-1] < 2.5, measured

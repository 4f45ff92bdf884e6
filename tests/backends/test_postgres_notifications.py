"""LISTEN/NOTIFY wake-ups (``stent_postgres.listen.PostgresNotifications``) on a real server.

* Across processes: an idle worker that polls every 30 s starts a dispatched workflow well
  under a second later, and the dispatching process's ``wait_for`` (whose own poll waits
  10 s and more) hears of the completion at once: only notifications can explain either.
* The LISTEN connection is terminated by the server: the listener comes back (capped
  backoff), and what was published while it was away is not lost (it looks again).
* The publisher: ids batched into few ``pg_notify`` calls, payloads split under the
  8000-byte limit, a failing handler never kills the listener, ``close()`` idempotent, fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from stent import Result, Stent
from stent_postgres import PostgresBackend
from stent_postgres import listen as listen_mod
from stent_postgres.listen import PostgresNotifications, decode_payload, encode_payloads
from stent_testing.pg import create_test_backend, dispose_test_backend, require_postgres

from . import notify_app

ROOT = Path(__file__).resolve().parent.parent.parent

#: the test process's own completion poll: too slow to explain a prompt wait_for
SLOW_POLL = {"poll_min_interval": 10.0, "poll_max_interval": 30.0}


# -- fixtures and helpers --------------------------------------------------------------------
@pytest.fixture
async def pg_backend() -> AsyncIterator[PostgresBackend]:
    backend = await create_test_backend(min_pool_size=1, max_pool_size=4)
    try:
        yield backend
    finally:
        await dispose_test_backend(backend)


@pytest.fixture
async def dsn() -> str:
    return await require_postgres()


class WorkerProcess:
    """``tests.backends.notify_app`` in a subprocess."""

    def __init__(self, dsn: str, schema: str, tmp: Path, name: str = "worker") -> None:
        self.ready_file = tmp / f"{name}.ready"
        self.log_file = tmp / f"{name}.log"
        env = {**os.environ,
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.backends.notify_app", dsn, schema,
             str(self.ready_file)],
            cwd=ROOT, env=env, stdout=self.log_file.open("wb"), stderr=subprocess.STDOUT,
        )

    async def ready(self, timeout: float = 30.0) -> int:
        """Wait until it serves; its LISTEN connection's server pid."""
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not ready after {timeout}s:\n{self.log()}")
            await asyncio.sleep(0.05)
        return int(self.ready_file.read_text())

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


async def admin_fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def listener_pids(dsn: str, app_name: str, user: str | None = None) -> set[int]:
    """Server pids of the LISTEN connections with ``app_name`` (and ``user``)."""
    rows = await admin_fetch(
        dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
             "AND ($2::text IS NULL OR usename = $2)", app_name, user)
    return {r["pid"] for r in rows}


async def until(predicate: Any, timeout: float, what: str, step: float = 0.02) -> float:
    """Await ``predicate()`` (sync or async) until true; the seconds it took."""
    start = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(step)


class Spy:
    """Records what a notification handler gets, with arrival times."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, str, list[str]]] = []
        self.event = asyncio.Event()

    def __call__(self, channel: str, ids: Sequence[str]) -> None:
        self.messages.append((time.monotonic(), channel, list(ids)))
        self.event.set()

    def ids(self, channel: str) -> list[str]:
        return [i for _, c, ids in self.messages if c == channel for i in ids]

    def count(self, channel: str) -> int:
        return sum(1 for _, c, _ in self.messages if c == channel)


async def raw_listener(dsn: str, prefix: str) -> tuple[asyncpg.Connection, list[tuple[str, str]]]:
    """A plain asyncpg LISTEN connection on both channels: every (channel, payload) received,
    one entry per NOTIFY delivered."""
    got: list[tuple[str, str]] = []
    conn = await asyncpg.connect(dsn, timeout=5)
    for c in ("work", "done"):
        await conn.add_listener(f"{prefix}_{c}",
                                lambda _c, _p, channel, payload: got.append((channel, payload)))
    return conn, got


def new_prefix() -> str:
    return f"stent_nt_{uuid.uuid4().hex[:10]}"


# -- A1: across processes, notifications, not polls --------------------------------------------
@pytest.mark.slow
async def test_idle_worker_in_another_process_starts_work_at_once_and_waiter_hears_at_once(
    pg_backend: PostgresBackend, tmp_path: Path, workers: list[WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = WorkerProcess(pg_backend.dsn, pg_backend.schema, tmp_path)
    workers.append(worker)
    await worker.ready()
    ex = Stent(pg_backend, **SLOW_POLL)
    heard: list[list[str]] = []
    notify_done = ex.hub.notify_done

    def spy(ids: Sequence[str]) -> None:
        heard.append(list(ids))
        notify_done(ids)

    monkeypatch.setattr(ex.hub, "notify_done", spy)
    try:
        rounds = []
        for _ in range(4):
            await asyncio.sleep(0.3)  # the worker is asleep in its 30 s poll
            dispatched = time.time()
            eid = await ex.dispatch(notify_app.stamp, 0.3)
            result = await asyncio.wait_for(ex.wait_for(eid), 10)
            seen = time.time()
            assert isinstance(result, Result) and result.ok, result
            value = result.unwrap()
            assert value["pid"] == worker.proc.pid and value["value"] == 2
            rounds.append({
                "pickup": value["started"] - dispatched,  # dispatch -> worker runs it
                "hear": seen - value["finished"],         # it ends -> wait_for returns
                "total": seen - dispatched - 0.3,         # minus the workflow's own hold
                "heard": any(eid in ids for ids in heard),
            })
    finally:
        await ex.shutdown()
    print("wake-up latency per round (s):", [{k: round(v, 4) if isinstance(v, float) else v
                                              for k, v in r.items()} for r in rounds])
    for r in rounds:
        # the worker polls every 30 s and the waiter every 10-30 s: only NOTIFY explains these
        assert r["pickup"] < 1.0, rounds
        assert r["hear"] < 1.0, rounds
        assert r["total"] < 2.0, rounds
        assert r["heard"], f"wait_for did not hear of the completion by NOTIFY: {rounds}"
    assert worker.proc.poll() is None


# -- A2: the LISTEN connection is cut; it comes back and nothing is lost --------------------------
@pytest.mark.slow
async def test_terminated_listen_connection_reconnects_and_loses_nothing(
    pg_backend: PostgresBackend, dsn: str, tmp_path: Path, workers: list[WorkerProcess],
) -> None:
    # The worker logs in as a role of its own, so that the test can refuse its reconnection
    # for a while (a real gap in which messages are published and lost) without touching
    # anybody else's connections.
    role = f"stent_t_{uuid.uuid4().hex[:8]}"
    await admin_fetch(dsn, f'CREATE ROLE "{role}" LOGIN SUPERUSER')
    try:
        host = dsn.split("://", 1)[1].rsplit("@", 1)[-1]
        worker = WorkerProcess(f"postgresql://{role}@{host}", pg_backend.schema, tmp_path)
        workers.append(worker)
        first_pid = await worker.ready()
        app_name = f"stent-listen:{pg_backend.channel_prefix}"
        assert await listener_pids(dsn, app_name, role) == {first_pid}
        ex = Stent(pg_backend, **SLOW_POLL)
        try:
            # warm up: the test process listens too
            eid = await ex.dispatch(notify_app.stamp, 0.0)
            assert (await asyncio.wait_for(ex.wait_for(eid), 10)).ok

            # 1. plain termination: the listener is back at once
            await admin_fetch(dsn, "SELECT pg_terminate_backend($1)", first_pid)
            back = await until(lambda: _other_pid(dsn, app_name, role, {first_pid}), 5,
                               "the worker's listener reconnecting")
            second = await listener_pids(dsn, app_name, role)
            t0 = time.time()
            eid = await ex.dispatch(notify_app.stamp, 0.0)
            value = (await asyncio.wait_for(ex.wait_for(eid), 10)).unwrap()
            after_reconnect = value["started"] - t0

            # 2. a gap: the listener is cut and cannot log in again for 1.5 s; workflows
            # dispatched meanwhile are announced to nobody in the worker
            await admin_fetch(dsn, f'ALTER ROLE "{role}" NOLOGIN')
            await admin_fetch(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = $1 AND usename = $2",
                              app_name, role)
            await until(lambda: _no_listener(dsn, app_name, role), 5, "the listener going")
            gap_ids = [await ex.dispatch(notify_app.stamp, 0.0) for _ in range(5)]
            waits = [asyncio.ensure_future(ex.wait_for(i)) for i in gap_ids]
            await asyncio.sleep(1.5)
            assert not any(w.done() for w in waits), "work started without a listener?"
            await admin_fetch(dsn, f'ALTER ROLE "{role}" LOGIN')
            reopened = time.time()
            results = await asyncio.wait_for(asyncio.gather(*waits), 15)
            gap_latency = max(r.unwrap()["started"] for r in results) - reopened
            third = await listener_pids(dsn, app_name, role)

            # 3. and a new dispatch is picked up promptly again
            t0 = time.time()
            eid = await ex.dispatch(notify_app.stamp, 0.0)
            value = (await asyncio.wait_for(ex.wait_for(eid), 10)).unwrap()
            final = value["started"] - t0
        finally:
            await ex.shutdown()
        print(f"listener back after {back:.3f}s; pickup after reconnect {after_reconnect:.3f}s;"
              f" gap work started {gap_latency:.3f}s after logins were allowed again;"
              f" pickup afterwards {final:.3f}s")
        assert len(second) == 1 and first_pid not in second
        assert len(third) == 1 and not third & second
        assert after_reconnect < 1.0
        # capped backoff (0.1, 0.2, ... at most 5 s apart): back within a few seconds
        assert gap_latency < 5.0, gap_latency
        assert final < 1.0
        assert worker.proc.poll() is None
        log = worker.log()
        assert log.count("LISTEN failed") <= 1, log  # one warning, not one per attempt
        assert "LISTEN connection" in log and "restored" in log, log
    finally:
        for w in workers:
            w.stop()
        await admin_fetch(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE usename = $1", role)
        with contextlib.suppress(Exception):
            await until(lambda: _no_listener(dsn, None, role), 5, "the role's sessions ending")
        await admin_fetch(dsn, f'DROP ROLE IF EXISTS "{role}"')


async def _other_pid(dsn: str, app_name: str, user: str, old: set[int]) -> bool:
    pids = await listener_pids(dsn, app_name, user)
    return bool(pids) and not pids & old


async def _no_listener(dsn: str, app_name: str | None, user: str) -> bool:
    rows = await admin_fetch(
        dsn, "SELECT 1 FROM pg_stat_activity WHERE usename = $1 "
             "AND ($2::text IS NULL OR application_name = $2)", user, app_name)
    return not rows


async def test_reconnected_listener_tells_the_handler_to_look_again(dsn: str) -> None:
    nb = PostgresNotifications(dsn, prefix=new_prefix())
    spy = Spy()
    await nb.start(spy)
    try:
        assert nb.listening
        first = nb.listener_pid
        assert first is not None
        assert [(c, ids) for _, c, ids in spy.messages] == [("work", []), ("done", [])]
        spy.messages.clear()
        await admin_fetch(dsn, "SELECT pg_terminate_backend($1)", first)
        await until(lambda: nb.listener_pid not in (None, first), 5, "reconnection")
        await until(lambda: spy.count("done") >= 1, 2, "the look-again message")
        # ids unknown (something may have been lost): "look at everything"
        assert [(c, ids) for _, c, ids in spy.messages] == [("work", []), ("done", [])]
        other = PostgresNotifications(dsn, prefix=nb._prefix)  # another process's executor
        try:
            await other.publish("done", ["after"])
            await until(lambda: "after" in spy.ids("done"), 2, "a message after reconnecting")
        finally:
            await other.close()
    finally:
        await nb.close()


async def test_an_executor_does_not_hear_its_own_messages(dsn: str) -> None:
    """What it publishes it has already acted on locally: hearing it would cost a claim."""
    prefix = new_prefix()
    nb = PostgresNotifications(dsn, prefix=prefix)
    other = PostgresNotifications(dsn, prefix=prefix)
    spy = Spy()
    await nb.start(spy)
    try:
        spy.messages.clear()
        await nb.publish("done", ["mine"])
        await other.publish("done", ["theirs"])
        await until(lambda: "theirs" in spy.ids("done"), 2, "the other executor's message")
        await asyncio.sleep(0.1)
        assert "mine" not in spy.ids("done")
    finally:
        await nb.close()
        await other.close()


async def test_messages_published_while_the_listener_is_down_are_made_up_for(
    dsn: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = new_prefix()
    nb = PostgresNotifications(dsn, prefix=prefix)
    other = PostgresNotifications(dsn, prefix=prefix)
    spy = Spy()
    await nb.start(spy)
    gate = asyncio.Event()
    real_connect = nb._connect

    async def slow_connect(role: str) -> asyncpg.Connection:
        await gate.wait()
        return await real_connect(role)

    try:
        monkeypatch.setattr(nb, "_connect", slow_connect)
        pid = nb.listener_pid
        spy.messages.clear()
        await admin_fetch(dsn, "SELECT pg_terminate_backend($1)", pid)
        await until(lambda: not nb.listening, 5, "the listener noticing")
        await other.publish("work", ["lost-1"])
        await other.publish("done", ["lost-2"])
        await asyncio.sleep(0.2)
        assert spy.messages == []  # nobody heard them
        gate.set()
        await until(lambda: spy.count("done") >= 1, 5, "the look-again message")
        assert ("work", []) in [(c, ids) for _, c, ids in spy.messages]
        assert ("done", []) in [(c, ids) for _, c, ids in spy.messages]
    finally:
        await other.close()
        await nb.close()


# -- A3: publishing --------------------------------------------------------------------------------
async def test_ids_published_together_share_one_notify(dsn: str) -> None:
    prefix = new_prefix()
    conn, got = await raw_listener(dsn, prefix)
    nb = PostgresNotifications(dsn, prefix=prefix)
    try:
        work = [uuid.uuid4().hex for _ in range(150)]
        done = [uuid.uuid4().hex for _ in range(60)]
        t0 = time.monotonic()
        for i in work:
            await nb.publish("work", [i])
        for i in done:
            await nb.publish("done", [i])
        await nb.publish("done", done[:10])  # duplicates travel once
        await until(lambda: len(got) >= 2, 2, "the notifications")
        latency = time.monotonic() - t0
        await asyncio.sleep(0.1)
        assert len(got) == 2, got  # 211 publishes: one pg_notify per channel
        by_channel = {c: p for c, p in got}
        assert decode_payload(by_channel[f"{prefix}_work"]) == work
        assert decode_payload(by_channel[f"{prefix}_done"]) == done
        assert latency < 0.5, latency

        # publishes far apart in time are not held back for each other
        got.clear()
        for n in range(3):
            await nb.publish("work", [f"spaced-{n}"])
            await asyncio.sleep(0.05)
        await until(lambda: len(got) >= 3, 2, "spaced notifications")
        assert [decode_payload(p) for _, p in got] == [[f"spaced-{n}"] for n in range(3)]
    finally:
        await nb.close()
        await conn.close()


async def test_a_bare_wake_up_carries_no_ids(dsn: str) -> None:
    prefix = new_prefix()
    conn, got = await raw_listener(dsn, prefix)
    nb = PostgresNotifications(dsn, prefix=prefix)
    try:
        await nb.publish("work", [])
        await until(lambda: got, 2, "the wake-up")
        assert got == [(f"{prefix}_work", "")]
        assert decode_payload("") == []
    finally:
        await nb.close()
        await conn.close()


async def test_payloads_over_8000_bytes_are_split(dsn: str) -> None:
    prefix = new_prefix()
    conn, got = await raw_listener(dsn, prefix)
    nb = PostgresNotifications(dsn, prefix=prefix)
    try:
        # execution ids may be user-chosen, up to 200 characters, not only ASCII
        long_ids = [f"{n:05d}-" + "é" * 194 for n in range(300)]  # ~390 bytes each
        hex_ids = [uuid.uuid4().hex for _ in range(1000)]
        await nb.publish("done", long_ids)
        await nb.publish("work", hex_ids)
        total = sum(len(i.encode()) + 1 for i in long_ids + hex_ids)
        await until(lambda: sum(len(decode_payload(p)) for _, p in got) >= 1300, 5,
                    "every id")
        sizes = [len(p.encode()) for _, p in got]
        assert max(sizes) < 8000, sizes
        assert len(got) <= total // 7000 + 2, sizes  # split, but not needlessly
        assert [i for c, p in got if c.endswith("_done") for i in decode_payload(p)] == long_ids
        assert [i for c, p in got if c.endswith("_work") for i in decode_payload(p)] == hex_ids
    finally:
        await nb.close()
        await conn.close()


def test_encode_payloads_splits_on_bytes_and_marks_ids_it_cannot_send() -> None:
    assert encode_payloads([]) == [""]
    assert encode_payloads(["a", "b", "a"]) == ["a,b"]
    assert encode_payloads(["aaaa", "bbbb", "cccc"], limit=9) == ["aaaa,bbbb", "cccc"]
    assert encode_payloads(["éé", "x"], limit=5) == ["éé", "x"]  # 4 bytes + comma + 1 > 5
    # a comma inside an id (or an id over the limit) cannot travel: "ids unknown"
    assert encode_payloads(["a,b", "c"]) == [",c"]
    assert decode_payload(",c") == []
    assert encode_payloads(["x" * 20, "y"], limit=10) == [",y"]
    ids = [uuid.uuid4().hex for _ in range(2000)]
    payloads = encode_payloads(ids)
    assert all(len(p.encode()) <= 7999 for p in payloads)
    assert [i for p in payloads for i in decode_payload(p)] == ids


async def test_a_failing_handler_never_kills_the_listener(
    dsn: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="stent.notifications.postgres")
    prefix = new_prefix()
    nb = PostgresNotifications(dsn, prefix=prefix)
    sender = PostgresNotifications(dsn, prefix=prefix)
    got: list[tuple[str, list[str]]] = []

    def handler(channel: str, ids: Sequence[str]) -> Any:
        got.append((channel, list(ids)))
        if "sync-boom" in ids:
            raise RuntimeError("sync boom")
        if "async-boom" in ids:
            async def fail() -> None:
                raise RuntimeError("async boom")
            return fail()
        return None

    await nb.start(handler)
    try:
        for ids in (["sync-boom"], ["async-boom"], ["sync-boom"], ["fine"]):
            await sender.publish("done", ids)
            await asyncio.sleep(0.05)
        await until(lambda: ("done", ["fine"]) in got, 3, "delivery after failures")
        await asyncio.sleep(0.05)
        assert nb.listening and nb._runner is not None and not nb._runner.done()
        failures = [r for r in caplog.records if "handler failed" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]  # once per 30 s
    finally:
        await sender.close()
        await nb.close()


async def test_close_is_idempotent_fast_and_releases_both_connections(dsn: str) -> None:
    prefix = new_prefix()
    nb = PostgresNotifications(dsn, prefix=prefix)
    await PostgresNotifications(dsn, prefix=prefix).close()  # never started: a no-op
    conn, got = await raw_listener(dsn, prefix)
    try:
        await nb.start(Spy())
        await nb.publish("work", ["x"])
        await until(lambda: got, 2, "the first message")
        names = {f"stent-listen:{prefix}", f"stent-notify:{prefix}"}
        rows = await admin_fetch(dsn, "SELECT application_name FROM pg_stat_activity "
                                      "WHERE application_name = ANY($1)", list(names))
        assert {r["application_name"] for r in rows} == names
        await nb.publish("work", ["queued-at-close"])
        timings = []
        for _ in range(3):
            t0 = time.monotonic()
            await nb.close()
            timings.append(time.monotonic() - t0)
        assert max(timings) < 1.0, timings
        await until(lambda: len(got) >= 2, 2, "the message queued before close")
        assert decode_payload(got[-1][1]) == ["queued-at-close"]
        await nb.publish("work", ["after-close"])  # dropped, no error, no reconnection
        await asyncio.sleep(0.1)
        assert len(got) == 2
        await until(lambda: _gone(dsn, list(names)), 2, "both connections closed")
        assert not nb.listening and nb.listener_pid is None
    finally:
        await conn.close()


async def _gone(dsn: str, names: list[str]) -> bool:
    return not await admin_fetch(dsn, "SELECT 1 FROM pg_stat_activity "
                                      "WHERE application_name = ANY($1)", names)


async def test_unreachable_server_costs_one_warning_and_never_raises(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="stent.notifications.postgres")
    monkeypatch.setattr(listen_mod, "_MAX_BACKOFF_S", 0.2)
    nb = PostgresNotifications("postgresql://postgres:s3cret@127.0.0.1:1/nowhere",
                               prefix=new_prefix())
    attempts: list[float] = []
    real_connect = nb._connect

    async def counting(role: str) -> asyncpg.Connection:
        attempts.append(time.monotonic())
        return await real_connect(role)

    monkeypatch.setattr(nb, "_connect", counting)
    spy = Spy()
    runner = asyncio.ensure_future(nb.start(spy))
    await asyncio.sleep(1.5)
    await nb.publish("work", ["x"])  # never raises
    t0 = time.monotonic()
    await nb.close()
    assert time.monotonic() - t0 < 1.5
    await asyncio.wait_for(runner, 2)
    listen_attempts = len(attempts)
    assert listen_attempts >= 4  # retried, with backoff (0.1, 0.2, 0.2, ...)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "connection refused" in warnings[0].getMessage()
    assert "s3cret" not in caplog.text
    assert spy.messages == []


async def test_executor_on_postgres_listens_by_default(pg_backend: PostgresBackend) -> None:
    ex = Stent(pg_backend)
    assert isinstance(ex.notifications_backend, PostgresNotifications)
    await ex.shutdown()

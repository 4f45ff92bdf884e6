"""Stent's own benchmark: the four workloads of the peers harness, on our engine.

    uv run python bench/run.py [--backend sqlite|postgres] [--workloads W1,W2,W3,W4] [--reps 3]
                               [--pg-url URL] [--pg-isolation database|schema]
                               [--json out.json] [--profile DIR]

Each (workload, rep) runs in a fresh child process (``bench/run.py --child ...``) against a
fresh database: a SQLite file in its own temporary directory, or on PostgreSQL a database
created for that child (``--pg-isolation database``, the default) or a schema of its own in
the ``--pg-url`` database (``--pg-isolation schema``), dropped afterwards. So runs never share
a database, a warm cache or an event loop. Every child runs one untimed ``chain(-1, 1)``
before the clock starts (as the peers harness does). The parent collects one JSON line per
child and prints a table with the median and the individual reps.

Workloads (the same as /work/shared/bench-peers/workloads.py):

* W1: 500 workflows ``chain(i, 3)``, dispatched up front, then waited in order; one
  in-process worker at ``max_concurrency=16``: workflows/s and steps/s (1,500 steps).
* W2: ``chain(i, 1)``, dispatch to result, 50 in a row (3 more warm-ups): p50/p95 ms.
* W3: one ``chain(0, 300)``: ms per step.
* W4: one ``fanout(200)`` (``add1.map(range(200))`` then ``sum``): steps/s.

Transactions per step:

* SQLite: ``SQLiteBackend.stats`` (``batches``/``commits``/``operations``) across the window.
* PostgreSQL, on the server: ``pg_stat_database.xact_commit`` of the bench's database, read
  from a separate connection (to the ``postgres`` database) before and after the window.
  PostgreSQL 15 flushes a backend's counters asynchronously, so right before each reading
  every connection the child holds (each pooled connection, acquired from the pool, and the
  LISTEN and NOTIFY connections) runs ``pg_stat_force_next_flush()`` in a statement that reads
  ``pg_class`` (without a table-level count pending, PG 15 skips the flush, and the commit
  counts of table-less transactions such as ``pg_notify`` stay behind); the ones run after
  the window are subtracted. Also ``pg_snapshot_xmax(pg_current_snapshot())`` across
  the window: xids assigned, i.e. transactions that wrote a row or sent a NOTIFY (cluster-wide:
  exact only when nothing else writes on the server).
* PostgreSQL, on the client: every statement PostgresBackend runs, by query name (the
  backend's ``stats`` only counts them in total), split into read-only ones and writes (an
  empty claim is counted as a write statement but changes nothing), and the ``pg_notify``
  transactions of the executor's LISTEN/NOTIFY backend. ``unaccounted`` is the server's count
  minus the client's: the LISTEN backend reads incoming notifications inside a transaction
  of its own (``ProcessIncomingNotify``, one per batch read), so it tracks the notifications
  received (also counted), plus the listener's keep-alive ``SELECT 1`` every 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from stent import Stent

HERE = Path(__file__).resolve()
ALL_WORKLOADS = ("W1", "W2", "W3", "W4")
CONCURRENCY = 16
CHILD_TIMEOUT_S = 600.0
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

# Targets from the issue: (metric key, op, bound) per backend.
TARGETS: dict[str, dict[str, tuple[str, str, float]]] = {
    "sqlite": {
        "W1": ("steps_per_s", ">=", 1000.0),
        "W3": ("per_step_ms", "<=", 1.0),
    },
    "postgres": {
        "W1": ("steps_per_s", ">=", 1000.0),
        "W2": ("p50_ms", "<=", 5.0),
        "W3": ("per_step_ms", "<=", 2.0),
    },
}
#: "at most one write transaction per new step on the hot path": W3 (one workflow, 300 steps)
WRITE_TARGET = ("W3", 1.0)

#: PostgresBackend's named queries that only read (everything else in queries/postgres.sql
#: writes, or may: a claim that finds nothing is an UPDATE of no row).
PG_READ_ONLY = frozenset({
    "execution_id_taken", "task_is_held", "task_by_step_key", "load_steps", "get_outcomes",
    "get_execution", "list_executions", "get_task", "list_tasks_for_execution", "count_tasks",
    "count_executions", "queue_depth", "list_dead_letters", "get_dead_letter",
    "version_table_exists", "recorded_version", "schema_exists",
})
#: The flush must touch a relation: PostgreSQL 15's pgstat_report_stat() returns early when no
#: table-level counts are pending, leaving the commit counts of transactions that read no table
#: (a ``SELECT pg_notify(...)``, the flush itself) unflushed until some later statement.
FLUSH_SQL = "SELECT pg_stat_force_next_flush() FROM pg_catalog.pg_class LIMIT 1"
#: Diagnostics (off by default): emulate a proposed engine change at run time, to measure it.
EXPERIMENTS = {
    "quiet-local-done": "TaskRunner._finished publishes 'done' only for a root task or one "
                        "whose parent is not running in this worker",
    "no-echo": "PostgresNotifications._on_notify drops notifications whose sender pid is its "
               "own publishing connection's",
}
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the durable functions (the same shapes as the peers' adapters) ------------------------------
@Stent.durable
async def add1(x: int) -> int:
    return x + 1


@Stent.durable
async def chain(x: int, n: int) -> int:
    for _ in range(n):
        x = await add1(x)
    return x


@Stent.durable
async def fanout(n: int) -> int:
    values = await add1.map(range(n))
    return sum(values)


# -- PostgreSQL targets --------------------------------------------------------------------------
def pg_url_with_db(url: str, db: str) -> str:
    """``url`` pointing at database ``db``."""
    return urlunsplit(urlsplit(url)._replace(path="/" + db))


def pg_url_db(url: str) -> str:
    """The database ``url`` names (libpq's default: the user name)."""
    parts = urlsplit(url)
    return parts.path.lstrip("/") or parts.username or "postgres"


def _ident(name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


@dataclass
class Target:
    """Where one child runs: a SQLite directory, or a PostgreSQL database and schema."""

    backend: str
    workdir: str | None = None
    pg_url: str | None = None  # the --pg-url (admin) URL
    pg_db: str | None = None  # the database the bench writes to
    pg_schema: str = "public"
    pg_max_pool: int | None = None  # None: PostgresBackend's default
    experiments: list[str] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        assert self.pg_url is not None and self.pg_db is not None
        return pg_url_with_db(self.pg_url, self.pg_db)

    @property
    def probe_dsn(self) -> str:
        """A connection to another database, whose queries never count in ``pg_db``'s."""
        assert self.pg_url is not None
        return pg_url_with_db(self.pg_url, "postgres" if self.pg_db != "postgres" else "template1")


async def _pg_admin(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=30)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def pg_prepare(url: str, isolation: str, tag: str) -> tuple[str, str]:
    """Create this child's database (or schema); returns ``(database, schema)``."""
    name = f"stent_bench_{os.getpid()}_{tag.lower()}_{uuid.uuid4().hex[:6]}"
    if isolation == "database":
        asyncio.run(_pg_admin(url, f"CREATE DATABASE {_ident(name)}"))
        return name, "public"
    return pg_url_db(url), name  # PostgresBackend.init_db creates the schema


def pg_cleanup(url: str, isolation: str, db: str, schema: str) -> None:
    if isolation == "database":
        asyncio.run(_pg_admin(url, f"DROP DATABASE IF EXISTS {_ident(db)} WITH (FORCE)"))
    else:
        asyncio.run(_pg_admin(pg_url_with_db(url, db),
                              f"DROP SCHEMA IF EXISTS {_ident(schema)} CASCADE"))


# -- child side ----------------------------------------------------------------------------------
@dataclass
class PgCounters:
    """Client-side counts: PostgresBackend statements by query name, pg_notify transactions."""

    queries: Counter[str] = field(default_factory=Counter)
    notifies: int = 0
    received: int = 0  # notifications delivered to the executor's LISTEN connection

    def snapshot(self) -> dict[str, Any]:
        return {"queries": dict(self.queries), "notifies": self.notifies,
                "received": self.received}


def apply_experiments(names: list[str], executor: Stent) -> None:
    """Emulate the engine changes of :data:`EXPERIMENTS` (patches on this process only)."""
    if "quiet-local-done" in names:
        from stent.runner import TaskRunner

        finished = TaskRunner._finished

        def quiet_finished(self: Any, outcome: Any, step: str, parent_id: str | None) -> None:
            if parent_id is None or parent_id not in self.worker.running:
                finished(self, outcome, step, parent_id)
                return
            self.executor.publish = lambda channel, task_id: None  # parent awaits here
            try:
                finished(self, outcome, step, parent_id)
            finally:
                del self.executor.publish

        TaskRunner._finished = quiet_finished  # type: ignore[method-assign]


def instrument_postgres(backend: Any, executor: Stent,
                        experiments: list[str] | tuple[str, ...] = ()) -> PgCounters:
    """Count every statement of ``backend`` and every NOTIFY of the executor's notifications.

    Wraps two private methods on these instances only (``PostgresDatabase._run``, through
    which every autocommit statement goes, and ``PostgresNotifications._notify``, one
    ``pg_notify`` transaction each): one more coroutine frame per call, nothing else.
    """
    counters = PgCounters()
    db = backend._db
    run = db._run

    async def counted_run(method: str, query: str, args: Any) -> Any:
        counters.queries[query] += 1
        result = await run(method, query, args)
        if query == "claim" and not result:
            counters.queries["claim:empty"] += 1
        return result

    db._run = counted_run
    nb = executor.notifications_backend
    notify = getattr(nb, "_notify", None)
    if notify is not None:
        async def counted_notify(*args: Any) -> None:
            counters.notifies += 1  # one pg_notify statement (one transaction) per call
            await notify(*args)

        nb._notify = counted_notify  # type: ignore[union-attr]
    on_notify = getattr(nb, "_on_notify", None)
    if on_notify is not None:
        # bound by add_listener when the LISTEN connection opens (after this)
        no_echo = "no-echo" in experiments

        def counted_on_notify(conn: Any, pid: int, channel: str, payload: str) -> None:
            if conn is not None:  # not the synthetic wake-up after a reconnect
                counters.received += 1
                pub = nb._publisher  # type: ignore[union-attr]
                if no_echo and pub is not None and pid == pub.get_server_pid():
                    return
            on_notify(conn, pid, channel, payload)

        nb._on_notify = counted_on_notify  # type: ignore[union-attr]
    return counters


@dataclass
class Harness:
    """A started executor and worker on a fresh database."""

    executor: Stent
    backend: Any
    worker: asyncio.Task[None]
    target: Target
    pg: PgCounters | None = None

    def commits(self) -> dict[str, int] | None:
        stats = getattr(self.backend, "stats", None)
        return dict(stats) if isinstance(stats, dict) else None

    async def run(self, fn: Any, *args: Any) -> Any:
        eid = await self.executor.dispatch(fn, *args)
        return await self.result(eid)

    async def result(self, eid: str) -> Any:
        res = await self.executor.wait_for(eid)
        if not res.ok:
            raise RuntimeError(f"execution {eid} failed: {res.error!r}")
        return res.value


def make_backend(target: Target) -> Any:
    if target.backend == "sqlite":
        from stent_postgres import SQLiteBackend

        assert target.workdir is not None
        return SQLiteBackend(os.path.join(target.workdir, "bench.sqlite3"))
    if target.backend == "postgres":
        from stent_postgres import PostgresBackend

        if target.pg_max_pool is None:
            return PostgresBackend(target.dsn, schema=target.pg_schema)
        return PostgresBackend(target.dsn, schema=target.pg_schema,
                               max_pool_size=target.pg_max_pool)
    raise SystemExit(f"unsupported backend {target.backend!r}")


async def start(target: Target) -> Harness:
    backend = make_backend(target)
    await backend.init_db()
    executor = Stent(backend=backend)
    apply_experiments(target.experiments, executor)
    pg = None
    if target.backend == "postgres":
        pg = instrument_postgres(backend, executor, target.experiments)
    worker = asyncio.create_task(executor.serve(max_concurrency=CONCURRENCY))
    await asyncio.wait_for(executor.wait_until_ready(), 30)
    return Harness(executor, backend, worker, target, pg)


async def stop(h: Harness) -> None:
    h.worker.cancel()
    try:
        await h.worker
    except asyncio.CancelledError:
        pass
    await asyncio.wait_for(h.executor.shutdown(), 30)
    await h.backend.close()


# -- PostgreSQL server-side counters -------------------------------------------------------------
def _side_connections(h: Harness) -> list[Any]:
    """The executor's LISTEN and NOTIFY connections (PostgresNotifications), if open."""
    nb = h.executor.notifications_backend
    conns = [getattr(nb, "_listener", None), getattr(nb, "_publisher", None)]
    return [c for c in conns if c is not None and not c.is_closed()]


def _pool(h: Harness) -> Any:
    pool = h.backend._db._pool
    return None if pool is None else pool.pool


def bench_server_pids(h: Harness) -> set[int]:
    """Server pids of every connection the child holds to the bench database."""
    conns = list(_side_connections(h))
    pool = _pool(h)
    if pool is not None:
        conns += [ho._con for ho in pool._holders
                  if ho._con is not None and not ho._con.is_closed()]
    return {c.get_server_pid() for c in conns}


async def flush_bench_stats(h: Harness) -> int:
    """Make every connection of the child flush its pending statistics now.

    Pooled connections are acquired from the pool (all the live ones at once, so that the
    worker cannot be using one meanwhile); returns how many flush statements ran (each is a
    committed transaction of the bench database).
    """
    n = 0
    pool = _pool(h)
    for _attempt in range(10):
        if pool is None:
            break
        live = {id(ho._con) for ho in pool._holders
                if ho._con is not None and not ho._con.is_closed()}
        got = [await pool.acquire() for _ in range(len(live))]
        try:
            for proxy in got:
                await proxy.fetchval(FLUSH_SQL)
                n += 1
            flushed = {id(proxy._con) for proxy in got}
        finally:
            for proxy in got:
                await pool.release(proxy)
        if live <= flushed:
            break
        await asyncio.sleep(0.01)  # the worker held one: go again
    for conn in _side_connections(h):
        for _try in range(5):
            try:
                await conn.fetchval(FLUSH_SQL)
            except Exception:  # the listener's keep-alive was using it
                await asyncio.sleep(0.01)
                continue
            n += 1
            break
    return n


def _proc_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK  # utime + stime


class PgProbe:
    """Reads the bench database's counters from a connection of its own."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.conn: Any = None

    async def open(self) -> None:
        import asyncpg

        self.conn = await asyncpg.connect(self.target.probe_dsn, timeout=30)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def read(self) -> dict[str, int]:
        row = await self.conn.fetchrow(
            "SELECT xact_commit, xact_rollback, "
            "pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid "
            "FROM pg_stat_database WHERE datname = $1", self.target.pg_db)
        return {k: int(row[k]) for k in ("xact_commit", "xact_rollback", "next_xid")}


def pg_window_metrics(before: dict[str, Any], after: dict[str, Any], flushes: int,
                      steps: int, wall: float) -> dict[str, Any]:
    """Server and client counts over the window, per step."""
    s0, s1 = before["server"], after["server"]
    q0, q1 = Counter(before["client"]["queries"]), Counter(after["client"]["queries"])
    dq = {k: v for k, v in (q1 - q0).items() if v}
    notifies = after["client"]["notifies"] - before["client"]["notifies"]
    received = after["client"]["received"] - before["client"]["received"]
    xact = s1["xact_commit"] - s0["xact_commit"] - flushes
    reads = sum(v for k, v in dq.items() if k in PG_READ_ONLY)
    writes = sum(v for k, v in dq.items() if k not in PG_READ_ONLY and k != "claim:empty")
    empty = dq.get("claim:empty", 0)
    client = reads + writes + notifies
    cpu = 0.0
    for pid, c1 in after["cpu"].items():
        cpu += c1 - before["cpu"].get(pid, 0.0)  # a connection opened in the window: all of it
    return {
        "pg_xact_commit": xact,
        "pg_xact_rollback": s1["xact_rollback"] - s0["xact_rollback"],
        "pg_xids": s1["next_xid"] - s0["next_xid"],
        "statements": dq,
        "write_xacts": writes,
        "empty_claims": empty,
        "read_xacts": reads,
        "notify_xacts": notifies,
        "notifications_received": received,
        "unaccounted_xacts": xact - client,
        "pg_xact_per_step": xact / steps,
        "write_xact_per_step": writes / steps,
        "effective_write_per_step": (writes - empty) / steps,
        "read_xact_per_step": reads / steps,
        "notify_per_step": notifies / steps,
        "xid_per_step": (s1["next_xid"] - s0["next_xid"]) / steps,
        "pg_cpu_s": cpu,
        "pg_cores": cpu / wall if wall > 0 else 0.0,
    }


# -- workloads -----------------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _expect(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


async def w1(h: Harness) -> dict[str, Any]:
    n, steps = 500, 3
    t0 = time.perf_counter()
    ids = [await h.executor.dispatch(chain, i, steps) for i in range(n)]
    dispatch_s = time.perf_counter() - t0
    results = [await h.result(eid) for eid in ids]
    wall = time.perf_counter() - t0
    for i, r in enumerate(results):
        _expect(r, i + steps, f"W1 workflow {i}")
    return {"wall_s": wall, "steps": n * steps, "dispatch_s": dispatch_s,
            "workflows_per_s": n / wall, "steps_per_s": n * steps / wall}


async def w2(h: Harness) -> dict[str, Any]:
    n = 50
    lat: list[float] = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        r = await h.run(chain, i, 1)
        lat.append((time.perf_counter() - t) * 1000.0)
        _expect(r, i + 1, f"W2 run {i}")
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "steps": n, "p50_ms": _percentile(lat, 50),
            "p95_ms": _percentile(lat, 95), "mean_ms": statistics.fmean(lat),
            "max_ms": max(lat)}


async def w3(h: Harness) -> dict[str, Any]:
    steps = 300
    t0 = time.perf_counter()
    r = await h.run(chain, 0, steps)
    wall = time.perf_counter() - t0
    _expect(r, steps, "W3")
    return {"wall_s": wall, "steps": steps, "per_step_ms": wall * 1000.0 / steps}


async def w4(h: Harness) -> dict[str, Any]:
    width = 200
    t0 = time.perf_counter()
    r = await h.run(fanout, width)
    wall = time.perf_counter() - t0
    _expect(r, width * (width + 1) // 2, "W4")
    return {"wall_s": wall, "steps": width, "steps_per_s": width / wall,
            "per_step_ms": wall * 1000.0 / width}


WORKLOADS: dict[str, Callable[[Harness], Awaitable[dict[str, Any]]]] = {
    "W1": w1, "W2": w2, "W3": w3, "W4": w4,
}


async def _pg_mark(h: Harness, probe: PgProbe) -> tuple[dict[str, Any], int]:
    """Settle (trailing NOTIFYs go out), flush every connection's counters, then read."""
    await asyncio.sleep(0.05)
    flushes = await flush_bench_stats(h)
    assert h.pg is not None
    mark = {"server": await probe.read(), "client": h.pg.snapshot()}
    return mark, flushes


def _cpu_of(pids: set[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        c = _proc_cpu(pid)
        if c is not None:
            out[pid] = c
    return out


async def child_main(workload: str, target: Target, profile: str | None) -> dict[str, Any]:
    probe: PgProbe | None = None
    if target.backend == "postgres":
        probe = PgProbe(target)
        await probe.open()
    h = await start(target)
    try:
        # Untimed warm-ups, as in the peers harness: one chain(-1, 1) before every
        # workload (connection, statement cache, lazy imports), three more for W2.
        _expect(await h.run(chain, -1, 1), 0, "warm-up")
        if workload == "W2":
            for i in range(3):
                _expect(await h.run(chain, i, 1), i + 1, "W2 warm-up")
        pg_before: dict[str, Any] | None = None
        if probe is not None:
            pg_before, _ = await _pg_mark(h, probe)
            pg_before["cpu"] = _cpu_of(bench_server_pids(h))
        before = h.commits()
        cpu0 = time.process_time()
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        metrics = await WORKLOADS[workload](h)
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
        metrics["cpu_s"] = time.process_time() - cpu0
        metrics["loadavg_1m"] = os.getloadavg()[0]
        after = h.commits()
        if probe is not None and pg_before is not None:
            cpu1 = _cpu_of(bench_server_pids(h))
            pg_after, flushes = await _pg_mark(h, probe)
            pg_after["cpu"] = cpu1
            metrics.update(pg_window_metrics(pg_before, pg_after, flushes, metrics["steps"],
                                             metrics["wall_s"]))
        elif before is not None and after is not None:
            d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            metrics["commits"] = d.get("commits", 0)
            metrics["write_ops"] = d.get("operations", 0)
            metrics["commits_per_step"] = d.get("commits", 0) / metrics["steps"]
            metrics["write_ops_per_step"] = d.get("operations", 0) / metrics["steps"]
    finally:
        await stop(h)
        if probe is not None:
            await probe.close()
    return metrics


def child_entry(workload: str, args: argparse.Namespace) -> dict[str, Any]:
    if args.backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="stent-bench-") as workdir:
            return asyncio.run(child_main(workload, Target("sqlite", workdir=workdir),
                                          args.profile))
    target = Target("postgres", pg_url=args.pg_url, pg_db=args.pg_db, pg_schema=args.pg_schema,
                    pg_max_pool=args.pg_max_pool, experiments=experiment_list(args))
    return asyncio.run(child_main(workload, target, args.profile))


# -- parent side ---------------------------------------------------------------------------------
HEADLINE: dict[str, list[tuple[str, str, str]]] = {
    # workload -> [(metric key, label, format)]
    "W1": [("workflows_per_s", "workflows/s", "{:.0f}"), ("steps_per_s", "steps/s", "{:.0f}")],
    "W2": [("p50_ms", "p50 ms", "{:.2f}"), ("p95_ms", "p95 ms", "{:.2f}")],
    "W3": [("per_step_ms", "ms/step", "{:.3f}")],
    "W4": [("steps_per_s", "steps/s", "{:.0f}")],
}
EXTRA: list[tuple[str, str, str]] = [
    ("cpu_s", "cpu s / wall s", ""),
    ("commits_per_step", "commits/step", "{:.3f}"),
    ("write_ops_per_step", "write ops/step", "{:.2f}"),
    ("pg_cores", "server cpu s / wall s (bench backends)", "{:.2f}"),
    ("pg_xact_per_step", "xact_commit/step (server, all)", "{:.3f}"),
    ("write_xact_per_step", "write statements/step (client)", "{:.3f}"),
    ("effective_write_per_step", "write statements less empty claims/step", "{:.3f}"),
    ("read_xact_per_step", "read-only statements/step", "{:.3f}"),
    ("notify_per_step", "NOTIFY transactions/step", "{:.3f}"),
    ("unaccounted_xacts", "server minus client (xacts)", "{:.0f}"),
    ("notifications_received", "notifications received by LISTEN", "{:.0f}"),
    ("xid_per_step", "xids assigned/step (cluster)", "{:.3f}"),
]


def experiment_list(args: argparse.Namespace) -> list[str]:
    return [e.strip() for e in (args.experiment or "").split(",") if e.strip()]


def run_child(workload: str, args: argparse.Namespace, profile: str | None,
              rep: int) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--child", workload, "--backend", args.backend]
    if args.pg_max_pool is not None:
        cmd += ["--pg-max-pool", str(args.pg_max_pool)]
    if args.experiment:
        cmd += ["--experiment", args.experiment]
    if profile:
        cmd += ["--profile", profile]
    db = schema = None
    if args.backend == "postgres":
        db, schema = pg_prepare(args.pg_url, args.pg_isolation, f"{workload}_{rep}")
        cmd += ["--pg-url", args.pg_url, "--pg-db", db, "--pg-schema", schema]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    finally:
        if db is not None and schema is not None:
            pg_cleanup(args.pg_url, args.pg_isolation, db, schema)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"{workload} child failed with exit code {proc.returncode}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return dict(json.loads(lines[-1]))


def git_revision() -> str:
    """The workspace commit; with uncommitted changes under packages/, ``+dirty:`` and the
    first 8 hex digits of a SHA-1 over ``git diff HEAD`` and the untracked files there."""
    import hashlib

    root = HERE.parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "packages"], cwd=root,
                               text=True, capture_output=True, check=True).stdout.strip()
        if not dirty:
            return rev
        digest = hashlib.sha1(subprocess.run(
            ["git", "diff", "HEAD", "--", "packages"], cwd=root, capture_output=True,
            check=True).stdout)
        untracked = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "packages"], cwd=root,
            text=True, capture_output=True, check=True).stdout.split()
        for name in sorted(untracked):
            digest.update(name.encode())
            digest.update((root / name).read_bytes())
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}+dirty:{digest.hexdigest()[:8]}"


def pg_server_info(url: str) -> str:
    async def read() -> str:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=30)
        try:
            row = await conn.fetchrow(
                "SELECT current_setting('server_version') AS v, current_setting('fsync') AS f, "
                "current_setting('synchronous_commit') AS s, "
                "current_setting('shared_buffers') AS b")
        finally:
            await conn.close()
        return (f"PostgreSQL {row['v']} fsync={row['f']} synchronous_commit={row['s']} "
                f"shared_buffers={row['b']}")

    return asyncio.run(read())


def machine() -> dict[str, Any]:
    return {
        "commit": git_revision(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg": os.getloadavg(),
    }


def fmt(v: float, spec: str) -> str:
    return spec.format(v) if spec else f"{v:.2f}"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    out = ["| workload | metric | median | reps |", "| --- | --- | --- | --- |"]
    for w, reps in results.items():
        rows = list(HEADLINE[w])
        rows += [m for m in EXTRA if m[0] in reps[0]]
        for key, label, spec in rows:
            if key == "cpu_s":
                vals = [r["cpu_s"] / r["wall_s"] for r in reps]
                spec = "{:.2f}"
            else:
                vals = [float(r[key]) for r in reps]
            med = statistics.median(vals)
            out.append(f"| {w} | {label} | {fmt(med, spec)} | "
                       f"{', '.join(fmt(v, spec) for v in vals)} |")
    return "\n".join(out)


def statement_mix(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per workload, the statements of its first rep, per step."""
    lines = []
    for w, reps in results.items():
        r = reps[0]
        if "statements" not in r:
            continue
        mix = ", ".join(f"{k} {v / r['steps']:.3f}" for k, v in
                        sorted(r["statements"].items(), key=lambda kv: -kv[1]))
        lines.append(f"{w} (rep 1, per step): {mix}, NOTIFY {r['notify_per_step']:.3f}")
    return lines


def verdicts(results: dict[str, list[dict[str, Any]]], backend: str) -> list[str]:
    lines = []
    for w, (key, op, bound) in TARGETS.get(backend, {}).items():
        if w not in results:
            continue
        med = statistics.median(float(r[key]) for r in results[w])
        ok = med >= bound if op == ">=" else med <= bound
        lines.append(f"{w} {key} median {med:.3f} (target {op} {bound:g}): "
                     f"{'PASS' if ok else 'FAIL'}")
    w, bound = WRITE_TARGET
    if backend == "postgres" and w in results and "write_xacts" in results[w][0]:
        # The workflow's own 3 writes (insert_execution, the claim of its root, complete_task
        # of its root) are not "per new step": take them out of W3's 300.
        reps = results[w]
        steps = reps[0]["steps"]
        writes = statistics.median((r["write_xacts"] - 3) / steps for r in reps)
        notes = statistics.median(r["notify_per_step"] for r in reps)
        xids = statistics.median(r["xid_per_step"] for r in reps)
        lines.append(
            f"{w} write statements per new step (less the workflow's own 3) median "
            f"{writes:.3f} (target <= {bound:g}): {'PASS' if writes <= bound else 'FAIL'}; "
            f"with NOTIFY transactions {writes + notes:.3f}: "
            f"{'PASS' if writes + notes <= bound else 'FAIL'}; xids/step {xids:.3f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    ap.add_argument("--workloads", default=",".join(ALL_WORKLOADS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pg-url", default=DEFAULT_PG_URL,
                    help=f"PostgreSQL server (and, for --pg-isolation schema, database); "
                         f"default {DEFAULT_PG_URL}")
    ap.add_argument("--pg-isolation", default="database", choices=["database", "schema"],
                    help="a fresh database per child (default), or a fresh schema in the "
                         "--pg-url database (its xact_commit then includes other sessions')")
    ap.add_argument("--pg-max-pool", type=int, default=None,
                    help="diagnostic: PostgresBackend max_pool_size (default: the backend's)")
    ap.add_argument("--experiment", default="",
                    help="diagnostic, comma list: " + "; ".join(
                        f"{k}: {v}" for k, v in EXPERIMENTS.items()))
    ap.add_argument("--json", help="write all results (and machine info) to this file")
    ap.add_argument("--profile", help="directory: dump a cProfile per child (timed window only)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--pg-db", help=argparse.SUPPRESS)
    ap.add_argument("--pg-schema", default="public", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        metrics = child_entry(args.child, args)
        print(json.dumps(metrics))
        return

    bad = [e for e in experiment_list(args) if e not in EXPERIMENTS]
    if bad:
        ap.error(f"unknown experiment(s) {bad}; known: {list(EXPERIMENTS)}")
    if (args.experiment or args.pg_max_pool) and args.backend != "postgres":
        ap.error("--experiment and --pg-max-pool are for --backend postgres")
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; known: {list(WORKLOADS)}")
    info = machine()
    if args.backend == "postgres":
        info["server"] = pg_server_info(args.pg_url)
        info["pg_url"] = args.pg_url
        info["pg_isolation"] = args.pg_isolation
        info["pg_max_pool"] = args.pg_max_pool
        info["experiments"] = experiment_list(args)
    print(f"# Stent bench: backend={args.backend} reps={args.reps} commit={info['commit']} "
          f"nproc={info['nproc']} python={info['python']} {info['date']}", flush=True)
    if "server" in info:
        print(f"# {info['server']}; {args.pg_url}; fresh {args.pg_isolation} per child",
              flush=True)
        if info["experiments"] or args.pg_max_pool:
            print(f"# DIAGNOSTIC RUN, not the defaults: experiments={info['experiments']} "
                  f"max_pool_size={args.pg_max_pool or 'default'}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for w in workloads:
        for rep in range(args.reps):
            prof = None
            if args.profile:
                os.makedirs(args.profile, exist_ok=True)
                prof = os.path.join(args.profile, f"{w}-rep{rep + 1}.prof")
            r = run_child(w, args, prof, rep + 1)
            results.setdefault(w, []).append(r)
            head = ", ".join(f"{label} {fmt(float(r[k]), spec)}" for k, label, spec in HEADLINE[w])
            print(f"  {w} rep {rep + 1}: {head} (wall {r['wall_s']:.2f} s, "
                  f"load {r['loadavg_1m']:.2f})", flush=True)
    print()
    print(table(results))
    mix = statement_mix(results)
    if mix:
        print()
        print("\n".join(mix))
    v = verdicts(results, args.backend)
    if v:
        print()
        print("\n".join(v))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "backend": args.backend, "reps": args.reps,
                       "results": results, "verdicts": v}, f, indent=2)


if __name__ == "__main__":
    main()

"""The chaos tests' durable functions and worker process.

Run as ``python -m tests.chaos.app TARGET --ledger DIR [options]`` (TARGET: a PostgreSQL DSN
or a SQLite file). The worker's id is ``chaos-<pid>``, so the harness knows whose leases are
whose. Every step body goes through :func:`body_run`, which appends its run to the ledger
(``ledger.py``) with the fence token it holds.

The fence token is not part of ``Stent.context()`` (see :func:`fence_token`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from stent import Stent

from .ledger import LedgerWriter

CAP = 3

_ledger: LedgerWriter | None = None
_executor: Stent | None = None


def _worker() -> tuple[LedgerWriter, Stent]:
    assert _ledger is not None and _executor is not None, "not running in a chaos worker"
    return _ledger, _executor


def fence_token() -> tuple[str, int, str]:
    """``(holder task id, fence, "own" | "inline")`` of the running step: the fence its
    writes are conditioned on. A claimed task's own; for a step running inline (no row of
    its own yet), its caller's, on which its insert is fenced.

    ``Stent.context()`` does not expose it, and reading it with ``get_task`` is wrong exactly
    when it matters: a worker that wakes up after losing its lease reads the *new* holder's
    fence. So it is taken from the engine's context of this run (private attributes).
    """
    ctx = Stent.context()._task
    assert ctx is not None
    if ctx.task.fence > 0:
        return ctx.task.id, ctx.task.fence, "own"
    rt = ctx.worker.running.get(ctx.task.id)
    assert rt is not None and rt.inline_parent is not None, "an unwritten step that is not inline"
    parent_id, parent_fence = rt.inline_parent
    return parent_id, parent_fence, "inline"


@contextlib.asynccontextmanager
async def body_run(key: str) -> AsyncIterator[None]:
    """Ledger a step body's run: ``start`` (fsynced) before it, ``end`` after it."""
    ledger, _ = _worker()
    ctx = Stent.context()
    holder, fence, kind = fence_token()
    run = uuid.uuid4().hex
    ledger.write(ev="start", run=run, key=key, fn=ctx.step_name, task=ctx.task_id,
                 exec=ctx.execution_id, token=[holder, fence, kind], t=time.time())
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        ledger.write(ev="end", run=run, outcome=outcome, t=time.time())


@Stent.durable(name="chaos.step")
async def step(key: str, work_ms: int) -> str:
    async with body_run(key):
        await asyncio.sleep(work_ms / 1000)
    return key


@Stent.durable(name="chaos.capped_step", max_concurrent=CAP)
async def capped_step(key: str, work_ms: int) -> str:
    async with body_run(key):
        await asyncio.sleep(work_ms / 1000)
    return key


@Stent.durable(name="chaos.workflow")
async def workflow(wf: int, steps: int, fanout: int, sleep_s: float, work_ms: int) -> int:
    """``steps`` sequential steps with a durable sleep after the second, then a fan-out."""
    for i in range(steps):
        if i == min(2, steps - 1):
            await Stent.sleep(sleep_s)
            ledger, ex = _worker()
            ledger.write(ev="woke", exec=Stent.context().execution_id,
                         clock=ex.clock.now().timestamp(), t=time.time())
        await step(f"w{wf}:s{i}", work_ms)
    await asyncio.gather(*(step(f"w{wf}:f{j}", work_ms) for j in range(fanout)))
    return steps + fanout


@Stent.durable(name="chaos.capped_flow")
async def capped_flow(group: int, n: int, work_ms: int) -> int:
    """A fan-out of ``n`` steps of a function capped at ``CAP`` running instances."""
    done = await asyncio.gather(*(capped_step(f"c{group}:{i}", work_ms) for i in range(n)))
    return len(done)


@Stent.durable(name="chaos.suicide")
async def suicide(key: str) -> str:
    """A poison step: it SIGKILLs the worker process that runs it, every time."""
    async with body_run(key):
        os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(60)  # not reached
    return key


@Stent.durable(name="chaos.poison_flow")
async def poison_flow(key: str) -> str:
    return await suicide(key)


@Stent.durable(name="chaos.zombie_step")
async def zombie_step(key: str, then: str, hold_s: float) -> str:
    """A step to be frozen mid-run. Its first run (fence 1) is busy in its own code for
    ``hold_s`` seconds (blocking, so that when it is continued the write that follows goes
    out before any heartbeat), then makes a durable call (``then="child"``: a child insert
    fenced on this task) or not (``"complete"``), and returns (a completion fenced on it).
    With ``"heartbeat"`` the first run awaits for a minute instead: a heartbeat finds the loss.
    Later runs take 0.2 s."""
    async with body_run(key):
        if fence_token()[1] > 1:
            await asyncio.sleep(0.2)
        elif then == "heartbeat":
            await asyncio.sleep(60)
        else:
            time.sleep(hold_s)
        if then == "child":
            await step(f"{key}:child", 0)
    return key


@Stent.durable(name="chaos.poison_sleeper")
async def poison_sleeper(key: str) -> str:
    """A durable sleep (a row of its own), then a poison step: when the workflow is
    dead-lettered, its sleep has not finished."""
    nap = asyncio.ensure_future(Stent.sleep(60))
    await asyncio.sleep(0.5)  # the sleep's row is written
    try:
        return await suicide(key)
    finally:
        nap.cancel()


async def serve(args: argparse.Namespace) -> None:
    global _ledger, _executor
    from stent_postgres import PostgresBackend, SQLiteBackend

    if args.target.startswith("postgres"):
        backend: Any = PostgresBackend(args.target, schema=args.schema or "public")
    else:
        backend = SQLiteBackend(args.target)
    await backend.init_db()
    notifications = None
    if args.redis:  # Redis wake-ups instead of none (SQLite) or LISTEN/NOTIFY (PostgreSQL)
        from stent_redis import RedisBackend

        notifications = RedisBackend(args.redis, channel_prefix=args.redis_prefix,
                                     client_name=f"chaos-{os.getpid()}")
    _ledger = LedgerWriter(args.ledger)
    _executor = Stent(backend, notification_backend=notifications,
                      max_crash_recoveries=args.max_crash_recoveries)
    await _executor.serve(
        worker_id=f"chaos-{os.getpid()}", max_concurrency=args.concurrency,
        lease_duration=timedelta(seconds=args.lease), poll_interval=args.poll,
        poll_interval_max=args.poll_max,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.app")
    p.add_argument("target", help="PostgreSQL DSN or SQLite file")
    p.add_argument("--schema")
    p.add_argument("--ledger", required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--lease", type=float, default=3.0)
    p.add_argument("--poll", type=float, default=0.1)
    p.add_argument("--poll-max", type=float, default=0.5)
    p.add_argument("--max-crash-recoveries", type=int, default=10)
    p.add_argument("--redis", help="Redis URL of the notification backend")
    p.add_argument("--redis-prefix", default="stent")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()

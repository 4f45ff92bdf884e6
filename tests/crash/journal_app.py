"""Durable functions for the subprocess crash tests. Each step body appends a JSON line to a
journal file (fsynced) before and after it runs, so the test can count executions of bodies
across processes that were killed."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from stent import Stent


def _journal(path: str, **entry: object) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({**entry, "pid": os.getpid()}) + "\n")
        f.flush()
        os.fsync(f.fileno())


@Stent.durable(name="crashtest.step")
async def step(journal: str, wf: int, n: int) -> int:
    _journal(journal, event="start", wf=wf, n=n)
    await asyncio.sleep(0.05)
    _journal(journal, event="end", wf=wf, n=n)
    return n


@Stent.durable(name="crashtest.workflow")
async def workflow(journal: str, wf: int, steps: int) -> int:
    total = 0
    for n in range(steps):
        total += await step(journal, wf, n)
    return total


@Stent.durable(name="crashtest.wide_workflow")
async def wide_workflow(journal: str, wf: int, steps: int) -> int:
    _journal(journal, event="root", wf=wf, n=-1)
    return sum(await asyncio.gather(*(step(journal, wf, n) for n in range(steps))))


async def _serve(target: str, schema: str | None) -> None:
    from datetime import timedelta

    from stent_postgres import PostgresBackend, SQLiteBackend

    if target.startswith("postgres"):
        backend: object = PostgresBackend(target, schema=schema or "public")
    else:
        backend = SQLiteBackend(target)
    await backend.init_db()  # type: ignore[attr-defined]
    executor = Stent(backend)  # type: ignore[arg-type]
    await executor.serve(max_concurrency=8, lease_duration=timedelta(seconds=1),
                         heartbeat_interval=timedelta(seconds=0.25), poll_interval=0.05)


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))

"""Durable functions for the CLI tests.

Imported by the tests (as ``tests.cli.cli_workflows``) and by ``stent worker`` subprocesses
(as ``cli_workflows``, from this directory): every function has an explicit ``name=`` so
that both register the same names.

Step bodies append ``{"step", "event", "pid", "i"}`` lines to the journal file named by
``$CLI_TEST_JOURNAL`` (when set), so that a test can see which process ran what.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from decimal import Decimal

from stent import Result, RetryPolicy, Stent

JOURNAL_ENV = "CLI_TEST_JOURNAL"


def _journal(step: str, event: str, i: int) -> None:
    path = os.environ.get(JOURNAL_ENV)
    if not path:
        return
    line = json.dumps({"step": step, "event": event, "pid": os.getpid(), "i": i})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


@Stent.durable(name="cli.add")
async def add(a: int, b: int) -> int:
    """A step: a + b."""
    return a + b


@Stent.durable(name="cli.order")
async def order(n: int) -> dict[str, object]:
    """A workflow of two steps returning a dict of JSON-awkward values."""
    total = await add(n, 1)
    total = await add(total, 1)
    return {"total": total, "at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
            "price": Decimal("9.99"), "pair": (1, "x")}


@Stent.durable(name="cli.declined")
async def declined(reason: str) -> Result[int]:
    """Returns a ``Result.Error`` (the execution completes; its value is the error)."""
    return Result.Error(ValueError(reason))


@Stent.durable(name="cli.approved")
async def approved(value: int) -> Result[int]:
    """Returns a ``Result.Ok``."""
    return Result.Ok(value)


@Stent.durable(name="cli.explode", retry_policy=RetryPolicy(max_attempts=1))
async def explode(message: str) -> None:
    """Fails at once, without retry: a dead letter."""
    raise RuntimeError(message)


@Stent.durable(name="cli.calls_explode", retry_policy=RetryPolicy(max_attempts=1))
async def calls_explode(message: str) -> str:
    """A workflow whose step is dead-lettered."""
    await explode(message)
    return "unreachable"


@Stent.durable(name="cli.slow_step")
async def slow_step(i: int, seconds: float) -> int:
    """Sleeps ``seconds`` (an ordinary sleep: the step is busy), then returns ``i * 10``."""
    _journal("slow_step", "start", i)
    await asyncio.sleep(seconds)
    _journal("slow_step", "end", i)
    return i * 10


@Stent.durable(name="cli.slow_workflow")
async def slow_workflow(k: int, steps: int, seconds: float) -> int:
    """``steps`` slow steps one after another; returns the sum of their results."""
    total = 0
    for j in range(steps):
        total += await slow_step(k * 100 + j, seconds)
    return total


@Stent.durable(name="cli.parked_step", queue="parked")
async def parked_step() -> str:
    """A step on queue ``parked``, which the tests' in-process workers do not serve."""
    return "done"


@Stent.durable(name="cli.survives_explosion")
async def survives_explosion(message: str) -> str:
    """Catches its dead-lettered step's error, then waits on a parked step: it stays
    unfinished while its dead letter ages."""
    try:
        await explode(message)
    except RuntimeError:
        pass
    return await parked_step()

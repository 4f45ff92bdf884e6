"""``stent stats`` (counts of executions and tasks by state, queue depths, dead letters) and
``stent watch`` (the same, redrawn every few seconds, with throughput and the newest
executions).

Queue depths are shown for the default queue and for every queue seen on the newest
executions, on dead letters, and named with ``--queue`` (the backend has no call that lists
every queue).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from stent import Stent
from stent.records import ExecutionStatus, TaskStatus

from .dlq import all_dead_letters
from .errors import EXIT_OK, UsageError
from .output import DEFAULT_QUEUE, fmt_queue, fmt_time, print_json, print_table
from .session import (
    add_db_options,
    add_json_option,
    non_negative_int,
    open_executor,
    queue_name,
    run_async,
)

__all__ = ["Stats", "collect", "register"]

#: how many of the newest executions are looked at for queue names
QUEUE_SAMPLE = 1000
TERMINAL = ("completed", "failed", "timed_out", "cancelled")


@dataclass
class Stats:
    """Counts at one moment."""

    executions: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    queues: dict[str | None, int] = field(default_factory=dict)
    dead_letters: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form: queue depths as a list, the default queue as ``null``."""
        return {
            "executions": self.executions,
            "tasks": self.tasks,
            "queues": [{"queue": q, "pending": n} for q, n in self.queues.items()],
            "dead_letters": self.dead_letters,
        }


def register(subparsers: Any) -> None:
    """Add the ``stats`` and ``watch`` commands to the ``stent`` parser."""
    stats = subparsers.add_parser(
        "stats", help="counts of executions and tasks by state, queue depths, dead letters",
        description="Count executions and tasks by state, pending tasks per queue, and "
                    "dead letters.",
    )
    _queue_option(stats)
    add_db_options(stats)
    add_json_option(stats)
    stats.set_defaults(handler=run_stats)

    watch = subparsers.add_parser(
        "watch", help="live terminal dashboard: counts, throughput, newest executions",
        description="Redraw counts, queue depths, throughput and the newest executions "
                    "every --interval seconds, until Ctrl-C.",
    )
    watch.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                       help="seconds between refreshes (default 2)")
    watch.add_argument("--iterations", type=non_negative_int, default=0, metavar="N",
                       help="stop after N refreshes (default: run until Ctrl-C)")
    _queue_option(watch)
    add_db_options(watch)
    watch.set_defaults(handler=run_watch)


def _queue_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", action="append", default=[], metavar="Q", type=queue_name,
                        help=f"also show the depth of queue Q (repeatable; {DEFAULT_QUEUE} "
                             "is the default queue)")


async def collect(executor: Stent, extra_queues: list[str | None] | None = None) -> Stats:
    """Count everything :class:`Stats` holds, with read-only backend calls."""
    backend = executor.backend
    stats = Stats()
    for es in ExecutionStatus:
        stats.executions[es.value] = await backend.count_executions(state=es.value)
    stats.executions["total"] = await backend.count_executions()
    for ts in TaskStatus:
        stats.tasks[ts.value] = await backend.count_tasks(state=ts.value)
    stats.tasks["total"] = await backend.count_tasks()
    dead = await all_dead_letters(executor)
    stats.dead_letters = len(dead)
    seen: set[str | None] = {None}
    seen.update(d.queue for d in dead)
    seen.update(e.queue for e in await backend.list_executions(limit=QUEUE_SAMPLE))
    seen.update(extra_queues or [])
    for q in sorted(seen, key=lambda q: (q is not None, q or "")):
        stats.queues[q] = await executor.queue_depth(q)
    return stats


def _print_stats(stats: Stats) -> None:
    sys.stdout.write("EXECUTIONS\n")
    print_table(["state", "count"], list(stats.executions.items()))
    sys.stdout.write("\nTASKS\n")
    print_table(["state", "count"], list(stats.tasks.items()))
    sys.stdout.write("\nQUEUES\n")
    print_table(["queue", "pending"], [[fmt_queue(q), n] for q, n in stats.queues.items()])
    sys.stdout.write(f"\nDEAD LETTERS  {stats.dead_letters}\n")


def run_stats(args: argparse.Namespace) -> int:
    """The ``stent stats`` handler."""

    async def fetch() -> Stats:
        async with open_executor(args) as executor:
            return await collect(executor, args.queue)

    stats = run_async(fetch())
    if args.json:
        print_json(stats.to_json())
    else:
        _print_stats(stats)
    return EXIT_OK


# -- watch ----------------------------------------------------------------------------------------
_CLEAR = "\x1b[H\x1b[2J"


def run_watch(args: argparse.Namespace) -> int:
    """The ``stent watch`` handler: redraw until Ctrl-C (exit 0) or ``--iterations``."""
    if not args.interval > 0:
        raise UsageError(f"invalid --interval {args.interval}: expected seconds > 0")
    try:
        run_async(_watch(args))
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    return EXIT_OK


async def _watch(args: argparse.Namespace) -> None:
    tty = sys.stdout.isatty()
    async with open_executor(args) as executor:
        previous: tuple[float, int] | None = None
        n = 0
        while True:
            stats = await collect(executor, args.queue)
            newest = await executor.backend.list_executions(limit=10)
            finished = sum(stats.executions.get(s, 0) for s in TERMINAL)
            now = time.monotonic()
            rate = None
            if previous is not None and now > previous[0]:
                # cleanup may delete finished executions meanwhile: never a negative rate
                rate = max(0, finished - previous[1]) / (now - previous[0])
            previous = (now, finished)
            sys.stdout.write(_CLEAR if tty else ("\n" if n else ""))
            sys.stdout.write(f"stent watch   {time.strftime('%Y-%m-%d %H:%M:%S')}   "
                             f"every {args.interval:g}s   Ctrl-C to quit\n\n")
            _print_stats(stats)
            shown = f"{rate:.2f}/s" if rate is not None else "(next refresh)"
            sys.stdout.write(f"THROUGHPUT    {shown} executions finished\n\nNEWEST\n")
            print_table(["id", "function", "state", "created", "finished"],
                        [[e.id, e.function, e.state, fmt_time(e.created_at),
                          fmt_time(e.finished_at)] for e in newest], empty="no executions")
            sys.stdout.flush()
            n += 1
            if args.iterations and n >= args.iterations:
                return
            await asyncio.sleep(args.interval)

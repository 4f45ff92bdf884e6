"""``stent cleanup --days N [--dry-run]``: retention, by hand.

Deletes what a worker's periodic cleanup deletes: executions in a terminal state
(``completed``, ``failed``, ``timed_out``, ``cancelled``) that finished more than N days ago,
with all their rows (tasks, dead letters), then dead letters written more than N days ago.

``--dry-run`` deletes nothing and prints the real counts, found with read-only calls: every
terminal execution is read (newest first, page by page) and its ``finished_at`` compared
with the cutoff, and every dead letter is read likewise. That reads the whole history once;
fine for an operator's command, not for a tight loop. Work that finishes while it runs may
make the later real run delete a little more.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from stent.records import TERMINAL_EXECUTION_STATES

from .dlq import all_dead_letters
from .errors import EXIT_OK
from .output import fmt_time, print_json, print_pairs
from .session import add_db_options, add_json_option, open_executor, run_async

if TYPE_CHECKING:
    from stent import Stent

__all__ = ["CleanupCounts", "count_cleanup", "register"]

_PAGE = 500


@dataclass(frozen=True)
class CleanupCounts:
    """What a cleanup deletes (or would delete).

    Attributes:
        executions: terminal executions finished before the cutoff.
        dead_letters: dead letters written before the cutoff, other than those of the
            executions above (which go with them).
        dead_letters_of_executions: dead letters deleted with those executions (known for a
            dry run only; None after a real one).
    """

    executions: int
    dead_letters: int
    dead_letters_of_executions: int | None = None


def register(subparsers: Any) -> None:
    """Add the ``cleanup`` command to the ``stent`` parser."""
    parser = subparsers.add_parser(
        "cleanup", help="delete finished executions and dead letters older than N days",
        description="Delete executions that finished (completed, failed, timed out or "
                    "cancelled) more than N days ago, with all their tasks, and dead letters "
                    "older than N days. --dry-run prints what would be deleted.",
    )
    parser.add_argument("--days", type=_days, required=True, metavar="N",
                        help="keep the last N days (a number >= 0; 0 deletes everything "
                             "finished)")
    parser.add_argument("--dry-run", action="store_true",
                        help="delete nothing; print the counts that would be deleted")
    add_db_options(parser)
    add_json_option(parser)
    parser.set_defaults(handler=run)


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"invalid number of days {text!r}: expected >= 0")
    return value


async def count_cleanup(executor: Stent, cutoff: datetime) -> CleanupCounts:
    """Count what ``cleanup_executions(cutoff)`` then ``cleanup_dead_letters(cutoff)`` would
    delete, without deleting anything."""
    backend = executor.backend
    doomed: set[str] = set()
    for state in sorted(TERMINAL_EXECUTION_STATES):
        offset = 0
        while True:
            page = await backend.list_executions(limit=_PAGE, offset=offset, state=state)
            doomed.update(e.id for e in page
                          if e.finished_at is not None and e.finished_at < cutoff)
            if len(page) < _PAGE:
                break
            offset += len(page)
    with_executions = 0
    alone = 0
    for d in await all_dead_letters(executor):
        if d.execution_id in doomed:
            with_executions += 1
        elif d.created_at < cutoff:
            alone += 1
    return CleanupCounts(len(doomed), alone, with_executions)


def run(args: argparse.Namespace) -> int:
    """The ``stent cleanup`` handler."""
    cutoff = datetime.now(UTC) - timedelta(days=args.days)

    async def clean() -> CleanupCounts:
        async with open_executor(args) as executor:
            if args.dry_run:
                return await count_cleanup(executor, cutoff)
            executions = await executor.backend.cleanup_executions(cutoff)
            dead_letters = await executor.backend.cleanup_dead_letters(cutoff)
            return CleanupCounts(executions, dead_letters)

    counts = run_async(clean())
    if args.json:
        print_json({
            "dry_run": args.dry_run, "cutoff": cutoff.isoformat(),
            "executions": counts.executions, "dead_letters": counts.dead_letters,
            "dead_letters_of_executions": counts.dead_letters_of_executions,
        })
        return EXIT_OK
    verb = "would be deleted" if args.dry_run else "deleted"
    dead = f"{counts.dead_letters} {verb}"
    if counts.dead_letters_of_executions:
        dead += f" (and {counts.dead_letters_of_executions} more with their executions)"
    print_pairs([
        ("cutoff", f"{fmt_time(cutoff)} ({args.days:g} day{'' if args.days == 1 else 's'} ago)"),
        ("executions", f"{counts.executions} {verb}"),
        ("dead letters", dead),
    ])
    if args.dry_run:
        print("dry run: nothing was deleted")
    return EXIT_OK

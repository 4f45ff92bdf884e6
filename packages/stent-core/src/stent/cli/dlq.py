"""``stent dlq``: dead letters, the tasks that failed for good (attempts exhausted, a poison
task that kept killing its workers, a non-deterministic replay).

``replay`` runs a dead-lettered task again with a fresh attempt; the failed tasks above it
resume by replay and its execution goes back to running. ``discard`` deletes the entry and
leaves the failure as it is.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from stent.records import DeadLetterRecord
from stent.serialization import decode_error

from .errors import EXIT_INVALID, EXIT_OK, CliError, UsageError
from .output import (
    describe_error,
    fmt_queue,
    fmt_time,
    json_safe,
    print_json,
    print_pairs,
    print_table,
    short_repr,
)
from .session import (
    add_db_options,
    add_json_option,
    non_negative_int,
    open_executor,
    queue_name,
    run_async,
)

if TYPE_CHECKING:
    from stent import Stent

__all__ = ["all_dead_letters", "register"]

_PAGE = 500


def register(subparsers: Any) -> None:
    """Add the ``dlq`` command group to the ``stent`` parser."""
    parser = subparsers.add_parser(
        "dlq", help="dead letters: list, show, replay, replay-all, discard",
        description="Work with dead letters: tasks that failed for good.",
    )
    commands = parser.add_subparsers(title="dlq commands", dest="dlq_command",
                                     metavar="COMMAND")
    lister = commands.add_parser("list", help="list dead letters, newest first",
                                 description="List dead letters, newest first.")
    lister.add_argument("--limit", type=non_negative_int, default=50, metavar="N",
                        help="at most N entries (default 50)")
    _common(lister, handler=run_list)

    show = commands.add_parser("show", help="show one dead letter and its error",
                               description="Show one dead letter, its error and its task.")
    show.add_argument("task_id", metavar="TASK_ID", help="the dead-lettered task's id")
    show.add_argument("--traceback", action="store_true",
                      help="also print the stored traceback of the error")
    _common(show, handler=run_show)

    replay = commands.add_parser(
        "replay", help="run a dead-lettered task again",
        description="Run a dead-lettered task again with a fresh attempt (retry count reset "
                    "unless --keep-retries); the tasks that failed because of it resume by "
                    "replay and its execution goes back to running.",
    )
    replay.add_argument("task_id", metavar="TASK_ID", help="the dead-lettered task's id")
    _replay_options(replay)
    _common(replay, handler=run_replay)

    replay_all = commands.add_parser(
        "replay-all", help="replay every dead letter",
        description="Replay every dead letter, oldest last (as listed). Entries whose task "
                    "can no longer be replayed are reported and left in place.",
    )
    _replay_options(replay_all)
    _common(replay_all, handler=run_replay_all)

    discard = commands.add_parser(
        "discard", help="delete a dead letter (the failure stands)",
        description="Delete a dead letter; the task and its execution stay failed.",
    )
    discard.add_argument("task_id", metavar="TASK_ID", help="the dead-lettered task's id")
    _common(discard, handler=run_discard)
    parser.set_defaults(handler=_missing_command)


def _common(parser: argparse.ArgumentParser, *, handler: Any) -> None:
    add_db_options(parser)
    add_json_option(parser)
    parser.set_defaults(handler=handler)


def _replay_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", type=_replay_queue, default=None, metavar="Q",
                        help="run it on queue Q (default: the queue it failed on)")
    parser.add_argument("--keep-retries", action="store_true",
                        help="keep the retry count instead of starting it again from zero")


def _replay_queue(text: str) -> str:
    queue = queue_name(text)
    if queue is None:
        # replay_dead_letter(queue=None) means "where it was": it cannot move a task to the
        # default queue.
        raise argparse.ArgumentTypeError(
            f"{text}: a dead letter can be replayed on its own queue (leave out --queue) or "
            "on a named one, not moved to the default queue")
    return queue


def _missing_command(args: argparse.Namespace) -> int:
    raise UsageError("missing command: stent dlq list|show|replay|replay-all|discard")


async def all_dead_letters(executor: Stent) -> list[DeadLetterRecord]:
    """Every dead letter, newest first.

    The backend lists the newest ``limit`` entries with no offset, so the limit doubles
    until the list comes back short.
    """
    limit = _PAGE
    while True:
        entries = await executor.list_dead_letters(limit=limit)
        if len(entries) < limit:
            return entries
        limit *= 2


def _entry_json(d: DeadLetterRecord) -> dict[str, Any]:
    return {
        "task_id": d.task_id, "execution_id": d.execution_id, "step_name": d.step_name,
        "queue": d.queue, "reason": d.reason, "retries": d.retries,
        "created_at": json_safe(d.created_at),
    }


def _decoded_error(d: DeadLetterRecord) -> BaseException | None:
    if d.error is None:
        return None
    try:
        return decode_error(d.error)
    except Exception as exc:  # show what we can; the stored bytes are untouched
        return ValueError(f"undecodable error: {type(exc).__name__}: {exc}")


# -- list and show -------------------------------------------------------------------------------
def run_list(args: argparse.Namespace) -> int:
    """The ``stent dlq list`` handler."""

    async def fetch() -> list[DeadLetterRecord]:
        async with open_executor(args) as executor:
            return await executor.list_dead_letters(limit=args.limit)

    rows = run_async(fetch())
    if args.json:
        print_json([_entry_json(d) for d in rows])
        return EXIT_OK
    print_table(
        ["task", "execution", "step", "queue", "reason", "retries", "created"],
        [[d.task_id, d.execution_id, d.step_name, fmt_queue(d.queue), short_repr(d.reason, 60)
          if "\n" in d.reason else d.reason, d.retries, fmt_time(d.created_at)] for d in rows],
        empty="no dead letters",
    )
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    """The ``stent dlq show`` handler."""

    async def fetch() -> tuple[DeadLetterRecord, str | None]:
        async with open_executor(args) as executor:
            entry = await executor.get_dead_letter(args.task_id)
            if entry is None:
                raise CliError(f"no dead letter for task {args.task_id!r}")
            task = await executor.backend.get_task(args.task_id)
            return entry, task.state if task is not None else None

    entry, task_state = run_async(fetch())
    error = _decoded_error(entry)
    if args.json:
        data = _entry_json(entry)
        data.update({"error": describe_error(error), "task_state": task_state})
        print_json(data)
        return EXIT_OK
    pairs: list[tuple[str, object]] = [
        ("task", entry.task_id),
        ("execution", entry.execution_id),
        ("step", entry.step_name),
        ("queue", fmt_queue(entry.queue)),
        ("reason", entry.reason),
        ("retries", entry.retries),
        ("dead-lettered", fmt_time(entry.created_at)),
        ("task state", task_state or "(task deleted)"),
        ("error", short_repr(error, 5000) if error is not None else "-"),
    ]
    trace = getattr(error, "remote_traceback", "")
    if args.traceback and trace:
        pairs.append(("traceback", trace.rstrip()))
    print_pairs(pairs)
    return EXIT_OK


# -- replay and discard ------------------------------------------------------------------------------
def run_replay(args: argparse.Namespace) -> int:
    """The ``stent dlq replay`` handler."""

    async def replay() -> DeadLetterRecord:
        async with open_executor(args) as executor:
            entry = await executor.get_dead_letter(args.task_id)
            if entry is None:
                raise CliError(f"no dead letter for task {args.task_id!r}")
            if not await executor.replay_dead_letter(args.task_id, queue=args.queue,
                                                     reset_retries=not args.keep_retries):
                raise CliError(f"dead letter for task {args.task_id!r} could not be replayed "
                               "(it is gone, or its task is no longer failed)")
            return entry

    entry = run_async(replay())
    queue = fmt_queue(args.queue if args.queue is not None else entry.queue)
    if args.json:
        print_json({"replayed": [entry.task_id], "failed": [], "queue": args.queue})
    else:
        print(f"replayed task {entry.task_id} ({entry.step_name}) of execution "
              f"{entry.execution_id} on queue {queue}")
    return EXIT_OK


def run_replay_all(args: argparse.Namespace) -> int:
    """The ``stent dlq replay-all`` handler: exit 1 if any entry could not be replayed."""

    async def replay_all() -> tuple[list[str], list[str]]:
        done: list[str] = []
        failed: list[str] = []
        tried: set[str] = set()
        async with open_executor(args) as executor:
            # Replayed entries disappear from the list; ones that cannot be replayed stay.
            # Stop when a pass finds nothing new, so that those cannot loop us forever.
            while True:
                batch = [d for d in await executor.list_dead_letters(limit=_PAGE + len(tried))
                         if d.task_id not in tried]
                if not batch:
                    return done, failed
                for d in batch:
                    tried.add(d.task_id)
                    ok = await executor.replay_dead_letter(
                        d.task_id, queue=args.queue, reset_retries=not args.keep_retries)
                    (done if ok else failed).append(d.task_id)

    done, failed = run_async(replay_all())
    if args.json:
        print_json({"replayed": done, "failed": failed, "queue": args.queue})
    else:
        print(f"replayed {len(done)} dead letter{'s' if len(done) != 1 else ''}")
        for task_id in failed:
            print(f"could not replay {task_id} (its task is no longer failed)")
    return EXIT_INVALID if failed else EXIT_OK


def run_discard(args: argparse.Namespace) -> int:
    """The ``stent dlq discard`` handler."""

    async def discard() -> bool:
        async with open_executor(args) as executor:
            return await executor.discard_dead_letter(args.task_id)

    if not run_async(discard()):
        raise CliError(f"no dead letter for task {args.task_id!r}")
    if args.json:
        print_json({"discarded": args.task_id})
    else:
        print(f"discarded the dead letter of task {args.task_id}")
    return EXIT_OK

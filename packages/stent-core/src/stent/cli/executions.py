"""``stent list`` and ``stent show ID``: executions, newest first, and one in detail.

``show`` decodes the stored arguments, result and error with the JSON serializer (the
default); values are shown with ``repr``, and ``--json`` gives a JSON-safe rendering (see
:func:`stent.cli.output.json_safe`). A function may return a ``Result`` itself: it is shown
as it was returned, ``Result.Error`` included, in a completed execution.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from stent.errors import ExecutionNotFound
from stent.inspection import ExecutionState
from stent.records import ExecutionStatus

from . import tasks
from .errors import EXIT_OK, CliError
from .output import (
    describe_error,
    fmt_duration,
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
    run_async,
)

__all__ = ["register", "run_list", "run_show"]

STATES = [s.value for s in ExecutionStatus]


def register(subparsers: Any) -> None:
    """Add the ``list`` and ``show`` commands to the ``stent`` parser."""
    lister = subparsers.add_parser(
        "list", help="list executions, newest first",
        description="List executions, newest first: id, function, state, created, finished.",
    )
    lister.add_argument("--state", choices=STATES, help="only executions in this state")
    lister.add_argument("--limit", type=non_negative_int, default=20, metavar="N",
                        help="at most N executions (default 20)")
    lister.add_argument("--offset", type=non_negative_int, default=0, metavar="N",
                        help="skip the N newest first (for paging)")
    add_db_options(lister)
    add_json_option(lister)
    lister.set_defaults(handler=run_list)

    show = subparsers.add_parser(
        "show", help="show one execution: state, timestamps, progress, result or error",
        description="Show one execution: its state, function and arguments, timestamps, "
                    "retries, progress log, tasks by state, and its result or error.",
    )
    show.add_argument("execution_id", metavar="ID", help="the execution id")
    show.add_argument("--traceback", action="store_true",
                      help="also print the stored traceback of an error")
    add_db_options(show)
    add_json_option(show)
    show.set_defaults(handler=run_show)


# -- list ---------------------------------------------------------------------------------------
def run_list(args: argparse.Namespace) -> int:
    """The ``stent list`` handler."""

    async def fetch() -> list[ExecutionState]:
        async with open_executor(args) as executor:
            return await executor.list_executions(limit=args.limit, offset=args.offset,
                                                  state=args.state)

    rows = run_async(fetch())
    if args.json:
        print_json([_summary(s) for s in rows])
        return EXIT_OK
    print_table(
        ["id", "function", "state", "created", "finished"],
        [[s.id, s.function, s.state, fmt_time(s.created_at), fmt_time(s.finished_at)]
         for s in rows],
        empty="no executions" + (f" in state {args.state}" if args.state else ""),
    )
    return EXIT_OK


def _summary(s: ExecutionState) -> dict[str, Any]:
    return {
        "id": s.id, "function": s.function, "state": s.state,
        "created_at": json_safe(s.created_at), "started_at": json_safe(s.started_at),
        "finished_at": json_safe(s.finished_at), "queue": s.queue, "tags": list(s.tags),
        "priority": s.priority, "retries": s.retries,
    }


# -- show ---------------------------------------------------------------------------------------
def run_show(args: argparse.Namespace) -> int:
    """The ``stent show`` handler."""
    state, call, task_states = run_async(_load(args))
    if args.json:
        data = _summary(state)
        data.update({
            "arguments": call,
            "result": json_safe(state.result) if state.state == "completed" else None,
            "result_repr": short_repr(state.result, 5000) if state.state == "completed" else None,
            "error": describe_error(state.error),
            "progress": json_safe(state.progress),
            "tasks": task_states,
            "counters": json_safe(state.counters),
            "custom_state": json_safe(state.custom_state),
        })
        print_json(data)
        return EXIT_OK
    duration = (state.finished_at - (state.started_at or state.created_at)).total_seconds() \
        if state.finished_at is not None and state.created_at is not None else None
    pairs: list[tuple[str, object]] = [
        ("execution", state.id),
        ("function", state.function),
        ("state", state.state),
        ("call", state.function + (call["repr"] if call is not None else "(?)")),
        ("queue", fmt_queue(state.queue)),
        ("tags", ", ".join(state.tags) or "-"),
        ("priority", state.priority),
        ("created", fmt_time(state.created_at)),
        ("started", fmt_time(state.started_at)),
        ("finished", fmt_time(state.finished_at)),
        ("duration", fmt_duration(duration)),
        ("retries", state.retries),
        ("tasks", ", ".join(f"{n} {k}" for k, n in task_states.items()) or "-"),
    ]
    if state.state == "completed":
        pairs.append(("result", short_repr(state.result, 5000)))
    if state.error is not None:
        pairs.append(("error", short_repr(state.error, 5000)))
        trace = getattr(state.error, "remote_traceback", "")
        if args.traceback and trace:
            pairs.append(("traceback", trace.rstrip()))
    if state.counters:
        pairs.append(("counters", short_repr(state.counters, 2000)))
    if state.custom_state:
        pairs.append(("custom state", short_repr(state.custom_state, 2000)))
    pairs.append(("progress", _progress_text(state.progress)))
    print_pairs(pairs)
    return EXIT_OK


async def _load(args: argparse.Namespace) -> tuple[ExecutionState, dict[str, Any] | None,
                                                   dict[str, int]]:
    async with open_executor(args) as executor:
        try:
            state = await executor.state_of(args.execution_id)
        except ExecutionNotFound as exc:
            raise CliError(str(exc)) from None
        record = await executor.backend.get_execution(args.execution_id)
        call = tasks.decode_arguments(executor, record.args) if record is not None else None
        counts: dict[str, int] = {}
        for t in await executor.backend.list_tasks_for_execution(args.execution_id):
            counts[t.state] = counts.get(t.state, 0) + 1
        return state, call, dict(sorted(counts.items()))


def _progress_text(progress: list[dict[str, Any]]) -> str:
    if not progress:
        return "-"
    lines = []
    for entry in progress:
        detail = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("event", "at"))
        at = _progress_time(entry.get("at"))
        lines.append(f"{at}  {entry.get('event', '?')}" + (f"  ({detail})" if detail else ""))
    return "\n".join(lines)



def _progress_time(value: object) -> str:
    """A progress entry's ISO time as ``2025-01-31 12:00:05.123Z`` (as stored if odd)."""
    try:
        t = datetime.fromisoformat(str(value)).astimezone(UTC)
    except ValueError:
        return str(value)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"

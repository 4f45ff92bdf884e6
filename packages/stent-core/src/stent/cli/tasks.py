"""``stent tasks list EXECUTION_ID`` and ``stent tasks show TASK_ID``: the durable calls of an
execution, with their step keys, states, attempts, leases and fences.

A task's lease is who holds it (``worker``) and until when (``lease``); its fence is bumped
by every claim, and every write by a worker is conditioned on it, so the fence tells how
many times the task was claimed.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from stent.records import TaskRecord
from stent.serialization import decode_error
from stent.steps import decode_call

from .errors import EXIT_OK, CliError, UsageError
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
from .session import add_db_options, add_json_option, open_executor, run_async

if TYPE_CHECKING:
    from stent import Stent

__all__ = ["decode_arguments", "decode_task_outcome", "register", "task_json"]


def register(subparsers: Any) -> None:
    """Add the ``tasks`` command group to the ``stent`` parser."""
    parser = subparsers.add_parser(
        "tasks", help="inspect the tasks (durable calls) of an execution",
        description="Inspect tasks: each durable call of an execution is a task.",
    )
    commands = parser.add_subparsers(title="tasks commands", dest="tasks_command",
                                     metavar="COMMAND")
    lister = commands.add_parser(
        "list", help="list an execution's tasks, oldest first",
        description="List the tasks of an execution, oldest first, with step name, kind, "
                    "state, attempt and retries, worker, lease and fence.",
    )
    lister.add_argument("execution_id", metavar="EXECUTION_ID", help="the execution id")
    add_db_options(lister)
    add_json_option(lister)
    lister.set_defaults(handler=run_list)

    show = commands.add_parser(
        "show", help="show one task in detail",
        description="Show one task: step key, routing, lease, fence, retry policy, "
                    "arguments, result or error.",
    )
    show.add_argument("task_id", metavar="TASK_ID", help="the task id")
    show.add_argument("--traceback", action="store_true",
                      help="also print the stored traceback of an error")
    add_db_options(show)
    add_json_option(show)
    show.set_defaults(handler=run_show)
    parser.set_defaults(handler=_missing_command)


def _missing_command(args: argparse.Namespace) -> int:
    raise UsageError("missing command: stent tasks list EXECUTION_ID | stent tasks show TASK_ID")


# -- decoding stored payloads -----------------------------------------------------------------
def decode_arguments(executor: Stent, payload: bytes) -> dict[str, Any] | None:
    """A call's stored arguments as ``{"args", "kwargs", "repr"}`` (JSON-safe), or
    ``{"undecodable": reason, "repr": ...}``; None when there are none stored."""
    if not payload:
        return None
    try:
        args, kwargs = decode_call(executor, payload)
    except Exception as exc:  # show what we can; the stored bytes are untouched
        reason = f"{type(exc).__name__}: {exc}"
        return {"undecodable": reason, "repr": f"<undecodable arguments: {reason}>"}
    parts = [short_repr(a, 500) for a in args]
    parts += [f"{k}={short_repr(v, 500)}" for k, v in kwargs.items()]
    return {"args": json_safe(list(args)), "kwargs": json_safe(kwargs),
            "repr": "(" + ", ".join(parts) + ")"}


def decode_task_outcome(executor: Stent, task: TaskRecord) -> tuple[Any, BaseException | None]:
    """A task's decoded result and error (either may be None). An undecodable payload is
    described as a string rather than raised."""
    result: Any = None
    error: BaseException | None = None
    if task.result is not None:
        try:
            result = executor.serializer.loads(task.result)
        except Exception as exc:
            result = f"<undecodable result: {type(exc).__name__}: {exc}>"
    if task.error is not None:
        try:
            error = decode_error(task.error)
        except Exception as exc:
            error = ValueError(f"undecodable error: {type(exc).__name__}: {exc}")
    return result, error


def task_json(task: TaskRecord) -> dict[str, Any]:
    """The stored fields of a task that a person or a script asks about (no payloads)."""
    return {
        "id": task.id, "execution_id": task.execution_id, "parent_id": task.parent_id,
        "parent_attempt": task.parent_attempt, "seq": task.seq, "step_name": task.step_name,
        "kind": task.kind, "state": task.state, "queue": task.queue, "tags": list(task.tags),
        "priority": task.priority, "attempt": task.attempt, "retries": task.retries,
        "crash_count": task.crash_count, "worker_id": task.worker_id,
        "lease_expires_at": json_safe(task.lease_expires_at), "fence": task.fence,
        "due_at": json_safe(task.due_at), "created_at": json_safe(task.created_at),
        "started_at": json_safe(task.started_at), "finished_at": json_safe(task.finished_at),
    }


def _max_attempts(task: TaskRecord) -> str:
    limit = task.retry_policy.get("max_attempts") if task.retry_policy else None
    return f"{task.attempt}/{limit}" if limit is not None else str(task.attempt)


# -- tasks list ---------------------------------------------------------------------------------
def run_list(args: argparse.Namespace) -> int:
    """The ``stent tasks list`` handler."""

    async def fetch() -> list[TaskRecord]:
        async with open_executor(args) as executor:
            if await executor.backend.get_execution(args.execution_id) is None:
                raise CliError(f"no execution with id {args.execution_id!r}")
            return await executor.backend.list_tasks_for_execution(args.execution_id)

    rows = run_async(fetch())
    if args.json:
        print_json([task_json(t) for t in rows])
        return EXIT_OK
    print_table(
        ["id", "parent", "seq", "step", "kind", "state", "attempt", "retries", "worker",
         "lease", "fence"],
        [[t.id, t.parent_id or "-", t.seq if t.parent_id else "-", t.step_name, t.kind,
          t.state, _max_attempts(t), t.retries, t.worker_id or "-",
          fmt_time(t.lease_expires_at), t.fence] for t in rows],
        empty="no tasks",
    )
    return EXIT_OK


# -- tasks show ---------------------------------------------------------------------------------
def run_show(args: argparse.Namespace) -> int:
    """The ``stent tasks show`` handler."""

    async def fetch() -> tuple[TaskRecord, dict[str, Any] | None, Any, BaseException | None]:
        async with open_executor(args) as executor:
            task = await executor.backend.get_task(args.task_id)
            if task is None:
                raise CliError(f"no task with id {args.task_id!r}")
            call = decode_arguments(executor, task.args) if task.kind == "function" else None
            result, error = decode_task_outcome(executor, task)
            return task, call, result, error

    task, call, result, error = run_async(fetch())
    if args.json:
        data = task_json(task)
        data.update({
            "arguments": call,
            "result": json_safe(result) if task.state == "completed" else None,
            "result_repr": short_repr(result, 5000) if task.state == "completed" else None,
            "error": describe_error(error),
            "retry_policy": json_safe(task.retry_policy),
            "timeout_s": task.timeout_s, "max_concurrent": task.max_concurrent,
            "idempotency_key": task.idempotency_key,
        })
        print_json(data)
        return EXIT_OK
    step_key = (f"({task.parent_id}, attempt {task.parent_attempt}, seq {task.seq})"
                if task.parent_id else "root task of its execution")
    pairs: list[tuple[str, object]] = [
        ("task", task.id),
        ("execution", task.execution_id),
        ("step key", step_key),
        ("step", task.step_name),
        ("kind", task.kind),
        ("state", task.state),
        ("call", task.step_name + call["repr"] if call is not None else "-"),
        ("queue", fmt_queue(task.queue)),
        ("tags", ", ".join(task.tags) or "-"),
        ("priority", task.priority),
        ("attempt", _max_attempts(task)),
        ("retries", task.retries),
        ("crash recoveries", task.crash_count),
        ("worker", task.worker_id or "-"),
        ("lease until", fmt_time(task.lease_expires_at)),
        ("fence", task.fence),
        ("due", fmt_time(task.due_at)),
        ("created", fmt_time(task.created_at)),
        ("started", fmt_time(task.started_at)),
        ("finished", fmt_time(task.finished_at)),
        ("timeout", f"{task.timeout_s}s" if task.timeout_s is not None else "-"),
        ("max concurrent", task.max_concurrent if task.max_concurrent is not None else "-"),
        ("retry policy", short_repr(task.retry_policy, 1000) if task.retry_policy else "-"),
    ]
    if task.state == "completed":
        pairs.append(("result", short_repr(result, 5000)))
    if error is not None:
        label = "error" if task.state == "failed" else "last error"
        pairs.append((label, short_repr(error, 5000)))
        trace = getattr(error, "remote_traceback", "")
        if args.traceback and trace:
            pairs.append(("traceback", trace.rstrip()))
    print_pairs(pairs)
    return EXIT_OK

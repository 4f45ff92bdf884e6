"""``stent cancel ID``: control of running executions."""

from __future__ import annotations

import argparse
from typing import Any

from stent.errors import ExecutionNotFound

from .errors import EXIT_OK, CliError
from .output import print_json
from .session import add_db_options, add_json_option, open_executor, run_async

__all__ = ["register", "run_cancel"]


def register(subparsers: Any) -> None:
    """Add the ``cancel`` command to the ``stent`` parser."""
    cancel = subparsers.add_parser(
        "cancel", help="cancel an execution",
        description="Cancel a pending or running execution: its pending steps are cancelled, "
                    "its running steps receive CancelledError, and it ends cancelled. "
                    "Cancelling a finished execution changes nothing.",
    )
    cancel.add_argument("execution_id", metavar="ID", help="the execution id")
    add_db_options(cancel)
    add_json_option(cancel)
    cancel.set_defaults(handler=run_cancel)


def run_cancel(args: argparse.Namespace) -> int:
    """The ``stent cancel`` handler."""

    async def cancel() -> str:
        async with open_executor(args) as executor:
            try:
                return await executor.cancel(args.execution_id)
            except ExecutionNotFound as exc:
                raise CliError(str(exc)) from None

    state = run_async(cancel())
    if args.json:
        print_json({"id": args.execution_id, "state": state})
    elif state in ("cancelling", "cancelled"):
        print(f"execution {args.execution_id}: {state}")
    else:
        print(f"execution {args.execution_id} had already finished ({state}): nothing to cancel")
    return EXIT_OK

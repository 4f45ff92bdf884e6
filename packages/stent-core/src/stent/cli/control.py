"""``stent cancel ID`` and ``stent signal ID NAME [PAYLOAD]``: control of running
executions."""

from __future__ import annotations

import argparse
import json
from typing import Any

from stent.errors import ExecutionNotFound
from stent.names import check_name

from .errors import EXIT_OK, CliError, UsageError
from .output import print_json, short_repr
from .session import add_db_options, add_json_option, open_executor, run_async

__all__ = ["register", "run_cancel", "run_signal"]

_FINISHED = ("completed", "failed", "timed_out", "cancelled")


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

    signal = subparsers.add_parser(
        "signal", help="send a signal to an execution",
        description="Send signal NAME with PAYLOAD to an execution: the next "
                    "Stent.wait_for_signal(NAME) in it returns PAYLOAD (a step waiting now "
                    "gets it at once; otherwise it is kept for the next wait). PAYLOAD is a "
                    "string, or JSON with --json (which also makes the output JSON); "
                    "without PAYLOAD the payload is None.",
    )
    signal.add_argument("execution_id", metavar="ID", help="the execution id")
    signal.add_argument("name", metavar="NAME", type=_signal_name,
                        help="the signal name (1-200 characters from A-Z a-z 0-9 _ . : -)")
    signal.add_argument("payload", metavar="PAYLOAD", nargs="?", default=None,
                        help="the payload: a string, or a JSON value with --json")
    add_db_options(signal)
    signal.add_argument("--json", action="store_true",
                        help="PAYLOAD is JSON (an object, list, number, string, true, false or "
                             "null), and print JSON (for scripts)")
    signal.set_defaults(handler=run_signal)


def _signal_name(text: str) -> str:
    """``argparse`` type: a signal name."""
    try:
        return check_name("signal", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def run_signal(args: argparse.Namespace) -> int:
    """The ``stent signal`` handler."""
    payload: Any = args.payload
    if args.json and payload is not None:
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise UsageError(
                f"PAYLOAD is not valid JSON ({exc}); quote it for the shell "
                "(e.g. '{\"approved\": true}'), or drop --json to send it as a string"
            ) from None

    async def send() -> str:
        async with open_executor(args) as executor:
            try:
                await executor.send_signal(args.execution_id, args.name, payload)
                return (await executor.state_of(args.execution_id)).state
            except ExecutionNotFound as exc:
                raise CliError(str(exc)) from None

    state = run_async(send())
    if args.json:
        print_json({"id": args.execution_id, "signal": args.name, "sent": True,
                    "state": state})
    elif state in _FINISHED:
        print(f"signal {args.name!r} sent to execution {args.execution_id}, which had already "
              f"finished ({state}): nothing will receive it")
    else:
        print(f"signal {args.name!r} sent to execution {args.execution_id} ({state}) "
              f"with payload {short_repr(payload)}")
    return EXIT_OK

"""``stent history export ID``: an execution's recorded step history as JSON.

The output is what ``Stent.history(id)`` returns; save it (``stent history export ID >
tests/golden/order.json``) and replay it in CI with ``stent_testing.replay``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from stent import Stent
from stent.errors import ExecutionNotFound, StentError

from .errors import EXIT_OK, CliError, UsageError
from .session import add_db_options, open_backend, run_async

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``history`` command group to the ``stent`` parser."""
    parser = subparsers.add_parser(
        "history",
        help="export an execution's step history (for replay tests)",
        description="Work with recorded step histories.",
    )
    commands = parser.add_subparsers(title="history commands", dest="history_command",
                                     metavar="COMMAND")
    export = commands.add_parser(
        "export",
        help="print an execution's step history as JSON",
        description=(
            "Print the recorded step history of execution ID as JSON, for replay tests: "
            "stent history export ID > tests/golden/order.json, then "
            "stent_testing.replay(load_history(path), workflow) in a test."
        ),
    )
    export.add_argument("execution_id", metavar="ID", help="the execution id")
    add_db_options(export)
    export.add_argument("--compact", action="store_true",
                        help="one line of JSON instead of indented output")
    export.set_defaults(handler=run_export)
    parser.set_defaults(handler=_missing_command)


def _missing_command(args: argparse.Namespace) -> int:
    raise UsageError("missing command: stent history export ID")


def run_export(args: argparse.Namespace) -> int:
    """The ``stent history export`` handler."""
    # A missing SQLite file is reported, not created: exporting only reads.
    backend = open_backend(args)
    history = run_async(_export(backend, args.execution_id))
    if args.compact:
        text = json.dumps(history, separators=(",", ":"))
    else:
        text = json.dumps(history, indent=2)
    sys.stdout.write(text + "\n")
    return EXIT_OK


async def _export(backend: Any, execution_id: str) -> dict[str, Any]:
    # No init_db: exporting reads, and must neither create a database nor migrate one.
    try:
        return await Stent(backend).history(execution_id)
    except ExecutionNotFound as exc:
        raise CliError(str(exc)) from None
    except StentError as exc:
        raise CliError(f"could not read the history of {execution_id}: {exc}") from None
    finally:
        await backend.close()

"""``stent history export ID``: an execution's recorded step history as JSON.

The output is what ``Stent.history(id)`` returns; save it (``stent history export ID >
tests/golden/order.json``) and replay it in CI with ``stent_testing.replay``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from stent import Stent
from stent.errors import ExecutionNotFound, StentError

from .dburl import ENV_VARS, backend_from_url, resolve_database_url, sqlite_path_from_url
from .errors import EXIT_OK, CliError, UsageError

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
    export.add_argument(
        "--db", metavar="URL", default=None,
        help=f"database URL (sqlite:///path, postgresql://..., memory://); default "
             f"{' then '.join(ENV_VARS)}",
    )
    export.add_argument("--compact", action="store_true",
                        help="one line of JSON instead of indented output")
    export.set_defaults(handler=run_export)
    parser.set_defaults(handler=_missing_command)


def _missing_command(args: argparse.Namespace) -> int:
    raise UsageError("missing command: stent history export ID")


def run_export(args: argparse.Namespace) -> int:
    """The ``stent history export`` handler."""
    url, _ = resolve_database_url(args.db)
    if url.lower().startswith("sqlite:"):
        path = sqlite_path_from_url(url)
        if path != ":memory:" and not os.path.exists(path):
            # Opening it would create an empty database file: say what is wrong instead.
            raise CliError(f"no SQLite database at {path}")
    backend = backend_from_url(url)
    history = asyncio.run(_export(backend, args.execution_id))
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

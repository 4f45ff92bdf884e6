"""The ``stent`` command.

Each command group lives in its own module (``stent.cli.demo``, ...) and exposes
``register(subparsers)``, which adds its parser(s) and sets ``handler`` to a function
``(argparse.Namespace) -> int``.

Exit status: 0 success, 1 not found or invalid request, 2 usage error.

Nothing printed may contain a database password: URLs are shown masked, and every message
(usage errors included, which may quote an argument) goes through
:func:`stent.cli.dburl.scrub` on its way out.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from . import cleanup, control, db, demo, dlq, executions, history, stats, tasks, worker
from .dburl import scrub
from .errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE, CliError, UsageError
from .session import add_db_options

__all__ = ["CliError", "UsageError", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

#: Command groups, in the order ``stent --help`` lists them.
COMMAND_MODULES = (demo, worker, db, executions, tasks, control, stats, dlq, cleanup, history)
DEBUG_ENV_VAR = "STENT_DEBUG"
"""Set to 1 to get a traceback (passwords scrubbed) for an unexpected error."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors say how to get help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # The message may quote an argument, and an argument may be a URL with a password
        # (``stent --db postgresql://u:pw@h/db lst``): it is scrubbed.
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {scrub(message)}\n"
                              f"Run '{self.prog} --help' for help.\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``stent`` argument parser with every command registered."""
    parser = _Parser(
        prog="stent",
        description="Stent: durable functions for Python. "
                    "Try 'stent demo' to watch a workflow survive a killed worker.",
    )
    add_db_options(parser, top_level=True)
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND",
                                parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stent`` command line.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 not found or invalid request, 2 usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except CliError as exc:
        print(f"stent: {scrub(exc.message)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("stent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout was closed by its reader (``stent list | head``): not an error. Point stdout
        # at devnull so that the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        # A bug, or a failure no command anticipated: one line (a traceback might quote a
        # DSN), unless asked for more.
        if os.environ.get(DEBUG_ENV_VAR):
            sys.stderr.write(scrub(traceback.format_exc()))
        print(f"stent: unexpected error: {scrub(f'{type(exc).__name__}: {exc}')} "
              f"(set {DEBUG_ENV_VAR}=1 for the traceback)", file=sys.stderr)
        return EXIT_INVALID


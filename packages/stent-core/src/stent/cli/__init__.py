"""The ``stent`` command.

Each command group lives in its own module (``stent.cli.demo``, ...) and exposes
``register(subparsers)``, which adds its parser(s) and sets ``handler`` to a function
``(argparse.Namespace) -> int``.

Exit status: 0 success, 1 not found or invalid request, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import demo, history
from .errors import EXIT_OK, EXIT_USAGE, CliError, UsageError

__all__ = ["CliError", "UsageError", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

#: Command groups, in the order ``stent --help`` lists them.
COMMAND_MODULES = (demo, history)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors say how to get help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n"
                              f"Run '{self.prog} --help' for help.\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``stent`` argument parser with every command registered."""
    parser = _Parser(
        prog="stent",
        description="Stent: durable functions for Python. "
                    "Try 'stent demo' to watch a workflow survive a killed worker.",
    )
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
        print(f"stent: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("stent: interrupted", file=sys.stderr)
        return 130


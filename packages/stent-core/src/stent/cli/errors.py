"""Errors that the ``stent`` command turns into an exit status and a one-line message."""

from __future__ import annotations

__all__ = ["EXIT_INVALID", "EXIT_OK", "EXIT_USAGE", "CliError", "UnavailableError", "UsageError"]

EXIT_OK = 0
"""The command did what was asked."""
EXIT_INVALID = 1
"""Something asked for was not found, or the request could not be carried out."""
EXIT_USAGE = 2
"""The command line itself was wrong (unknown command, bad option, bad database URL)."""


class CliError(Exception):
    """An error the command line reports as ``stent: <message>`` and exits with ``exit_code``."""

    exit_code: int = EXIT_INVALID

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CliError):
    """The command line was wrong: exit status 2."""

    exit_code = EXIT_USAGE


class UnavailableError(CliError):
    """Something needed is not installed or not available here: exit status 1."""

    exit_code = EXIT_INVALID

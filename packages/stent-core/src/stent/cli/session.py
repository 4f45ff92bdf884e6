"""A command's session with the database: the shared options, opening the backend, and
turning what goes wrong into a one-line, password-free :class:`~stent.cli.errors.CliError`.

Every command that touches the database takes ``--db URL`` and ``--schema NAME`` (also
accepted before the command: ``stent --db URL list``), and most take ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from stent import Stent
from stent.errors import BackendError, StentError
from stent.names import check_queue

from .dburl import (
    ENV_VARS,
    SCHEMA_ENV_VAR,
    backend_from_url,
    resolve_database_url,
    scrub,
    sqlite_path_from_url,
)
from .errors import CliError
from .output import DEFAULT_QUEUE

if TYPE_CHECKING:
    from stent.backend import Backend

__all__ = [
    "add_db_options",
    "add_json_option",
    "describe_backend",
    "non_negative_int",
    "open_backend",
    "open_executor",
    "queue_name",
    "run_async",
]

T = TypeVar("T")

DB_HELP = (f"database URL: sqlite:///path, postgresql://user:password@host/db or memory:// "
           f"(default: ${' then $'.join(ENV_VARS)})")
SCHEMA_HELP = f"PostgreSQL schema of the Stent tables (default: ${SCHEMA_ENV_VAR}, else public)"


def add_db_options(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """Add ``--db`` and ``--schema`` to ``parser``.

    Args:
        parser: the parser of the ``stent`` command (``top_level``) or of a sub-command.
        top_level: the top-level parser holds the defaults (None); a sub-command's options
            default to "not given", so that they do not clobber a value given before the
            command name.
    """
    default: Any = None if top_level else argparse.SUPPRESS
    parser.add_argument("--db", metavar="URL", default=default, help=DB_HELP)
    parser.add_argument("--schema", metavar="NAME", default=default, help=SCHEMA_HELP)


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--json``: print JSON for machines instead of a table for people."""
    parser.add_argument("--json", action="store_true",
                        help="print JSON (for scripts) instead of a table")


def open_backend(args: argparse.Namespace, *, create: bool = False) -> Backend:
    """The backend that ``--db``/``--schema`` (or the environment) name, unopened.

    Args:
        args: the parsed command line.
        create: the command may create the database (``init-db``, ``worker``). Otherwise a
            ``sqlite:///`` file that does not exist is an error rather than a new, empty file.

    Raises:
        UsageError: no database, or an unsupported URL.
        CliError: a SQLite file that does not exist (when not ``create``).
    """
    url, _ = resolve_database_url(getattr(args, "db", None))
    # Usage errors first; making a backend opens nothing (connections are made on first use).
    backend = backend_from_url(url, schema=getattr(args, "schema", None))
    if not create and url.lower().startswith("sqlite:"):
        path = sqlite_path_from_url(url)
        if path != ":memory:" and not os.path.exists(path):
            raise CliError(f"no SQLite database at {path} (create one with: stent init-db)")
    return backend


def describe_backend(backend: Any) -> str:
    """Where a backend keeps its data, password-free: the masked DSN and schema, or the
    SQLite path."""
    masked = getattr(backend, "masked_dsn", None)
    if masked is not None:
        return f"{scrub(str(masked))} (schema {getattr(backend, 'schema', 'public')})"
    path = getattr(backend, "path", None)
    if path is not None:
        return f"sqlite {path}"
    return type(backend).__name__


class _NoNotifications:
    """A notification backend that sends nothing.

    A command is one short call: starting LISTEN/NOTIFY connections for it would cost more
    than it saves. Workers find what a command changed (a replayed dead letter) at their next
    poll.
    """

    async def start(self, handler: Any) -> None:
        """Deliver nothing."""

    async def publish(self, channel: str, ids: Sequence[str]) -> None:
        """Send nothing."""

    async def close(self) -> None:
        """Nothing to close."""


@contextlib.asynccontextmanager
async def open_executor(args: argparse.Namespace, *, create: bool = False) -> AsyncIterator[Stent]:
    """An executor on the command's backend for the length of the block (no worker, no
    notifications); the backend is closed on the way out.

    Args:
        args: the parsed command line.
        create: see :func:`open_backend`.
    """
    backend = open_backend(args, create=create)
    try:
        yield Stent(backend, notification_backend=_NoNotifications())
    finally:
        with contextlib.suppress(Exception):
            await backend.close()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning failures into a :class:`CliError` (exit 1).

    Backend errors keep their message (which names the database with its password masked);
    anything else is reported by type and message. Every message goes through
    :func:`~stent.cli.dburl.scrub` first.
    """
    try:
        return asyncio.run(coro)
    except CliError as exc:
        exc.message = scrub(exc.message)
        raise
    except BackendError as exc:
        raise CliError(scrub(str(exc))) from None
    except StentError as exc:
        raise CliError(scrub(f"{type(exc).__name__}: {exc}")) from None
    except ValueError as exc:
        raise CliError(scrub(str(exc))) from None
    except BrokenPipeError:
        raise  # the reader went away (``stent watch | head``): main() exits quietly
    except (OSError, RuntimeError) as exc:
        # sqlite3 errors and the like: worth one line, never a traceback quoting a DSN
        raise CliError(scrub(f"{type(exc).__name__}: {exc}")) from None


def non_negative_int(text: str) -> int:
    """``argparse`` type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: expected an int >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: expected an int >= 0")
    return value



def queue_name(text: str) -> str | None:
    """``argparse`` type: a queue name, ``@default`` for the default queue (None)."""
    if text == DEFAULT_QUEUE:
        return None
    try:
        return check_queue(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

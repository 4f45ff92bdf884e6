"""``stent init-db``: create the Stent tables, or migrate them to this version.

Safe to run while workers are up and safe to run twice: the backends' ``init_db`` is
idempotent and serializes concurrent migrations.
"""

from __future__ import annotations

import argparse
from typing import Any

from .errors import EXIT_OK
from .output import print_json, print_pairs
from .session import add_db_options, add_json_option, describe_backend, open_backend, run_async

__all__ = ["register", "run_init_db"]


def register(subparsers: Any) -> None:
    """Add the ``init-db`` command to the ``stent`` parser."""
    parser = subparsers.add_parser(
        "init-db",
        help="create or migrate the database schema",
        description="Create the Stent tables in the database (a SQLite file is created if "
                    "missing), or migrate them to this version of Stent. Idempotent.",
    )
    add_db_options(parser)
    add_json_option(parser)
    parser.set_defaults(handler=run_init_db)


def run_init_db(args: argparse.Namespace) -> int:
    """The ``stent init-db`` handler."""
    backend = open_backend(args, create=True)
    description = describe_backend(backend)

    async def init() -> None:
        try:
            await backend.init_db()
        finally:
            await backend.close()

    run_async(init())
    if args.json:
        print_json({"ok": True, "database": description})
    else:
        print_pairs([("database", description), ("schema", "ready")])
    return EXIT_OK


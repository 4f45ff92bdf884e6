"""SQL files shipped with the package, loaded by name: numbered migrations and named queries.

Layout, one folder per dialect::

    schema/<dialect>/0001_initial.sql     migrations, applied in version order
    schema/<dialect>/0002_....sql
    queries/<dialect>.sql                 named queries, each under a ``-- name --`` header
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_QUERY_HEADER = re.compile(r"^-- ([a-z0-9_]+) --$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema migration.

    Attributes:
        version: the schema version the database has once this migration is applied.
        name: the file name, for messages.
        sql: the file's text (one or more statements).
    """

    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """Every migration of ``dialect``, by ascending version.

    Args:
        dialect: folder under ``schema/`` (``"sqlite"``, ``"postgres"``).

    Returns:
        The migrations, versions 1, 2, ... without gaps.

    Raises:
        RuntimeError: the packaged files are inconsistent (a gap or a duplicate version).
    """
    folder = resources.files("stent_postgres").joinpath("schema", dialect)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match is not None:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        names = ", ".join(m.name for m in found)
        raise RuntimeError(f"stent-postgres {dialect} migrations are not numbered 1..n: {names}")
    return found


def load_queries(dialect: str) -> dict[str, str]:
    """The named queries of ``dialect``: ``{name: sql}``.

    Each query in ``queries/<dialect>.sql`` starts with a line ``-- name --``; the text up to
    the next such line (comments included, which the database ignores) is its SQL.
    """
    text = resources.files("stent_postgres").joinpath("queries", f"{dialect}.sql").read_text("utf-8")
    parts = _QUERY_HEADER.split(text)
    # parts = [preamble, name1, sql1, name2, sql2, ...]
    queries = {name: sql.strip() for name, sql in zip(parts[1::2], parts[2::2], strict=True)}
    if len(queries) != len(parts) // 2:
        raise RuntimeError(f"duplicate query names in queries/{dialect}.sql")
    return queries


def split_sqlite_statements(script: str) -> list[str]:
    """Split a SQLite script into complete statements.

    ``sqlite3.Cursor.executescript`` commits any open transaction first, which would let a
    migration escape the ``BEGIN IMMEDIATE`` that makes concurrent ``init_db`` calls safe;
    so statements are run one by one inside it. ``sqlite3.complete_statement`` knows about
    semicolons inside strings, comments and trigger bodies.
    """
    statements: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()
    ):
        raise RuntimeError(f"incomplete SQL statement at the end of a migration: {buf[:80]!r}")
    return statements

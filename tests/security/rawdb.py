"""Direct SQL access to a backend's database, beside the backend: to tamper with stored rows
(as an attacker with database access, or a corrupted disk, would) and to take snapshots of
the schema and of the row counts per table.

Statements are written with ``?`` placeholders; on PostgreSQL they become ``$1, $2, ...``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from stent.backend import Backend


@dataclass
class RawDB:
    """Plain SQL on the database of ``backend`` (a ``SQLiteBackend`` or ``PostgresBackend``)."""

    kind: str
    backend: Backend

    @classmethod
    def of(cls, backend: Backend) -> RawDB:
        name = type(backend).__name__
        if name == "SQLiteBackend":
            return cls("sqlite", backend)
        if name == "PostgresBackend":
            return cls("postgres", backend)
        raise TypeError(f"no raw SQL access to a {name}")

    # -- statements ------------------------------------------------------------------------
    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one statement, as tuples (a write is committed)."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.backend.path, timeout=30)  # type: ignore[attr-defined]
            try:
                rows = conn.execute(sql, params).fetchall()
                conn.commit()
                return [tuple(r) for r in rows]
            finally:
                conn.close()
        conn = await self._pg()
        try:
            return [tuple(r) for r in await conn.fetch(_dollars(sql), *params)]
        finally:
            await conn.close()

    async def execute(self, sql: str, *params: Any) -> None:
        await self.fetch(sql, *params)

    async def value(self, sql: str, *params: Any) -> Any:
        rows = await self.fetch(sql, *params)
        return rows[0][0] if rows else None

    async def _pg(self) -> Any:
        import asyncpg

        schema = self.backend.schema  # type: ignore[attr-defined]
        return await asyncpg.connect(self.backend.dsn,  # type: ignore[attr-defined]
                                     server_settings={"search_path": f'"{schema}"'})

    # -- snapshots -------------------------------------------------------------------------
    async def tables(self) -> list[str]:
        """Every table of the schema (the database file for SQLite), sorted."""
        if self.kind == "sqlite":
            rows = await self.fetch(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")
        else:
            rows = await self.fetch(
                "SELECT table_name::text FROM information_schema.tables "
                "WHERE table_schema = ? ORDER BY 1", self.backend.schema)  # type: ignore[attr-defined]
        return [r[0] for r in rows]

    async def schema(self) -> dict[str, list[tuple[str, str]]]:
        """``{table: [(column, type), ...]}`` for every table."""
        out: dict[str, list[tuple[str, str]]] = {}
        for table in await self.tables():
            if self.kind == "sqlite":
                rows = await self.fetch(f'SELECT name, type FROM pragma_table_info("{table}")')
            else:
                rows = await self.fetch(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns "
                    "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                    self.backend.schema, table)  # type: ignore[attr-defined]
            out[table] = [(r[0], r[1]) for r in rows]
        return out

    async def counts(self) -> dict[str, int]:
        """Rows per table."""
        return {t: int(await self.value(f'SELECT count(*) FROM "{t}"'))
                for t in await self.tables()}


def _dollars(sql: str) -> str:
    parts = sql.split("?")
    out = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        out += f"${i}{part}"
    return out


def diff_counts(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Tables whose row count changed: ``{table: (before, after)}``."""
    return {t: (before.get(t, 0), after.get(t, 0))
            for t in sorted(set(before) | set(after)) if before.get(t, 0) != after.get(t, 0)}

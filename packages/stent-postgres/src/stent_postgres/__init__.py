"""SQL backends for Stent: ``PostgresBackend`` (asyncpg) and ``SQLiteBackend`` (aiosqlite).

Backends are imported on first access, so ``import stent_postgres`` stays cheap and a
backend's driver is only needed when that backend is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .postgres import PostgresBackend
    from .sqlite import SQLiteBackend

__all__ = ["PostgresBackend", "SQLiteBackend"]


def __getattr__(name: str) -> Any:
    if name == "SQLiteBackend":
        from .sqlite import SQLiteBackend

        return SQLiteBackend
    if name == "PostgresBackend":
        from .postgres import PostgresBackend

        return PostgresBackend
    raise AttributeError(f"module 'stent_postgres' has no attribute {name!r}")

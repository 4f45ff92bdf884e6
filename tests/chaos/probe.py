"""Looking at Stent's tables from outside, as an operator with ``psql`` or ``sqlite3`` would:
whose leases are held, when a task was claimed again, whole-table snapshots, and writing a
corrupted payload into a row. (The checker itself reads through the backend's API.)"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

#: tables whose rows a zombie worker must not change
TABLES = ("stent_executions", "stent_tasks", "stent_dead_letters", "stent_concurrency")


@dataclass(frozen=True)
class Lease:
    fence: int
    state: str
    worker_id: str | None
    lease_expires_at: float | None


class Probe(Protocol):
    async def held_by(self, worker_id: str, step_name: str | None = None) -> dict[str, int]:
        """``{task id: fence}`` of the running tasks leased to ``worker_id`` (of one function
        when ``step_name`` is given)."""

    async def leases(self, task_ids: list[str]) -> dict[str, Lease]:
        """The current lease of each task."""

    async def corrupt_args(self, task_id: str, payload: bytes) -> None:
        """Overwrite a task's stored arguments."""

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table in :data:`TABLES`, in a stable order."""

    async def close(self) -> None: ...


async def open_probe(backend: Any) -> Probe:
    """A probe on ``backend``'s database (a connection of its own)."""
    from .fleet import target_of

    target, schema = target_of(backend)
    return await PgProbe.connect(target, schema) if schema else SqliteProbe(Path(target))


def _epoch(v: datetime | float | None) -> float | None:
    return v.timestamp() if isinstance(v, datetime) else v


class PgProbe:
    def __init__(self, pool: Any) -> None:
        self.pool = pool  # the takeover trackers of overlapping kills ask at once

    @classmethod
    async def connect(cls, dsn: str, schema: str) -> PgProbe:
        import asyncpg

        return cls(await asyncpg.create_pool(
            dsn, min_size=1, max_size=4, server_settings={"search_path": f'"{schema}"'}))

    async def held_by(self, worker_id: str, step_name: str | None = None) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT id, fence FROM stent_tasks WHERE worker_id = $1 AND state = 'running' "
            "AND ($2::text IS NULL OR step_name = $2)", worker_id, step_name)
        return {r["id"]: r["fence"] for r in rows}

    async def leases(self, task_ids: list[str]) -> dict[str, Lease]:
        rows = await self.pool.fetch(
            "SELECT id, fence, state, worker_id, lease_expires_at FROM stent_tasks "
            "WHERE id = ANY($1::text[])", task_ids)
        return {r["id"]: Lease(r["fence"], r["state"], r["worker_id"],
                               _epoch(r["lease_expires_at"])) for r in rows}

    async def corrupt_args(self, task_id: str, payload: bytes) -> None:
        await self.pool.execute("UPDATE stent_tasks SET args = $2 WHERE id = $1", task_id,
                                payload)

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        out = {}
        for table in TABLES:
            rows = await self.pool.fetch(f"SELECT * FROM {table}")
            out[table] = sorted((tuple(r.values()) for r in rows), key=repr)
        return out

    async def close(self) -> None:
        await self.pool.close()


class SqliteProbe:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)

    async def held_by(self, worker_id: str, step_name: str | None = None) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT id, fence FROM stent_tasks WHERE worker_id = ? AND state = 'running' "
            "AND (? IS NULL OR step_name = ?)", (worker_id, step_name, step_name)).fetchall()
        return dict(rows)

    async def leases(self, task_ids: list[str]) -> dict[str, Lease]:
        marks = ",".join("?" * len(task_ids))
        rows = self.db.execute(
            "SELECT id, fence, state, worker_id, lease_expires_at FROM stent_tasks "
            f"WHERE id IN ({marks})", task_ids).fetchall()
        return {r[0]: Lease(r[1], r[2], r[3], r[4]) for r in rows}

    async def corrupt_args(self, task_id: str, payload: bytes) -> None:
        self.db.execute("UPDATE stent_tasks SET args = ? WHERE id = ?", (payload, task_id))

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        present = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        return {t: sorted(self.db.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in TABLES if t in present}

    async def close(self) -> None:
        self.db.close()

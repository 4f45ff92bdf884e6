"""``stent cancel`` as a subprocess, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from .conftest import Database


def test_cancel_a_pending_execution_then_it_is_cancelled(seeded_db: Database) -> None:
    parked = seeded_db.ids["parked"]  # queued on a queue no worker serves
    proc = seeded_db.stent("cancel", parked)
    assert proc.returncode == 0, proc.stderr
    assert "cancelled" in proc.stdout
    shown = seeded_db.json("show", parked)
    assert shown["state"] == "cancelled"


def test_cancel_a_finished_execution_is_a_no_op(seeded_db: Database) -> None:
    proc = seeded_db.stent("cancel", seeded_db.ids["order"], "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"id": seeded_db.ids["order"], "state": "completed"}


def test_cancel_an_unknown_execution_exits_1(seeded_db: Database) -> None:
    proc = seeded_db.stent("cancel", "no-such-execution")
    assert proc.returncode == 1
    assert "no-such-execution" in proc.stderr

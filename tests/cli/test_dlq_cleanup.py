"""``stent dlq ...`` and ``stent cleanup`` as subprocesses, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from stent import Stent
from stent.backend import Backend

from . import cli_workflows as wf
from .conftest import Database, PastClock, seed


def _dead_task(db: Database) -> str:
    entries = db.json("dlq", "list")
    assert len(entries) == 1
    return str(entries[0]["task_id"])


# -- dlq ----------------------------------------------------------------------------------------------
def test_dlq_list_and_show(seeded_db: Database) -> None:
    proc = seeded_db.stent("dlq", "list")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["TASK", "EXECUTION", "STEP", "QUEUE",
                                                   "REASON", "RETRIES", "CREATED"]
    assert "cli.explode" in proc.stdout and "attempts exhausted" in proc.stdout
    entry = seeded_db.json("dlq", "list")[0]
    assert entry["execution_id"] == seeded_db.ids["boom"]
    assert entry["step_name"] == "cli.explode" and entry["queue"] is None
    shown = seeded_db.stent("dlq", "show", entry["task_id"])
    assert shown.returncode == 0, shown.stderr
    assert "RuntimeError('kaboom')" in shown.stdout
    data = seeded_db.json("dlq", "show", entry["task_id"])
    assert data["error"]["message"] == "kaboom" and data["task_state"] == "failed"
    assert seeded_db.json("dlq", "list", "--limit", "0") == []


def test_dlq_replay_makes_the_task_claimable_and_the_execution_run_again(
    seeded_db: Database,
) -> None:
    task_id = _dead_task(seeded_db)
    proc = seeded_db.stent("dlq", "replay", task_id, "--queue", "retry-lane")
    assert proc.returncode == 0, proc.stderr
    assert "replayed task" in proc.stdout and "retry-lane" in proc.stdout
    assert seeded_db.json("dlq", "list") == []
    task = seeded_db.json("tasks", "show", task_id)
    assert task["state"] == "pending" and task["queue"] == "retry-lane"
    assert task["retries"] == 0
    assert seeded_db.json("show", seeded_db.ids["boom"])["state"] == "running"
    # gone from the dead letters: a second replay is a not-found
    again = seeded_db.stent("dlq", "replay", task_id)
    assert again.returncode == 1 and task_id in again.stderr


def test_dlq_replay_all_and_discard(seeded_db: Database) -> None:
    task_id = _dead_task(seeded_db)
    discarded = seeded_db.stent("dlq", "discard", task_id)
    assert discarded.returncode == 0, discarded.stderr
    assert seeded_db.json("dlq", "list") == []
    assert seeded_db.json("tasks", "show", task_id)["state"] == "failed"  # the failure stands
    assert seeded_db.stent("dlq", "discard", task_id).returncode == 1
    # nothing left to replay
    assert seeded_db.json("dlq", "replay-all") == {"replayed": [], "failed": [], "queue": None}


def test_dlq_replay_all_replays_every_entry(empty_db: Database) -> None:
    empty_db.ids = empty_db.call(seed)
    empty_db.call(lambda b: seed(b, prefix="second-"))
    assert len(empty_db.json("dlq", "list")) == 2
    result = empty_db.json("dlq", "replay-all", "--keep-retries")
    assert len(result["replayed"]) == 2 and result["failed"] == []
    assert empty_db.json("dlq", "list") == []


def test_dlq_usage_and_not_found(seeded_db: Database) -> None:
    assert seeded_db.stent("dlq").returncode == 2
    assert seeded_db.stent("dlq", "show", "nope").returncode == 1
    assert seeded_db.stent("dlq", "discard", "nope").returncode == 1
    proc = seeded_db.stent("dlq", "replay", "nope", "--queue", "@default")
    assert proc.returncode == 2 and "default queue" in proc.stderr
    assert seeded_db.stent("dlq", "replay", "nope", "--queue", "bad queue!").returncode == 2


# -- cleanup -----------------------------------------------------------------------------------------
def _counts(db: Database) -> dict[str, Any]:
    async def count(backend: Backend) -> dict[str, Any]:
        return {
            "executions": await backend.count_executions(),
            "tasks": await backend.count_tasks(),
            "dead_letters": len(await backend.list_dead_letters(1000)),
        }

    result: dict[str, Any] = db.call(count)
    return result


def test_cleanup_dry_run_prints_real_counts_and_deletes_nothing(empty_db: Database) -> None:
    db = empty_db
    # Ten days ago: 4 finished executions (one with a dead letter) and one still pending.
    db.call(lambda b: seed(b, clock=PastClock(timedelta(days=10)), prefix="old-"))
    # Now: the same again; nothing of it is older than the cutoff.
    db.call(lambda b: seed(b, prefix="new-"))
    before = _counts(db)
    assert before["executions"] == 10 and before["dead_letters"] == 2

    dry = db.json("cleanup", "--days", "5", "--dry-run")
    assert dry["dry_run"] is True
    assert dry["executions"] == 4  # the old finished ones; the old pending one stays
    assert dry["dead_letters_of_executions"] == 1
    assert dry["dead_letters"] == 0  # no dead letter older than the cutoff is left over
    assert _counts(db) == before
    text = db.stent("cleanup", "--days", "5", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "4 would be deleted" in text.stdout and "nothing was deleted" in text.stdout

    real = db.json("cleanup", "--days", "5")
    assert real["dry_run"] is False
    assert real["executions"] == dry["executions"]
    assert real["dead_letters"] == dry["dead_letters"]
    after = _counts(db)
    assert after["executions"] == 6 and after["dead_letters"] == 1
    remaining = {e["id"] for e in db.json("list", "--limit", "100")}
    assert "old-parked-1" in remaining and "old-order-1" not in remaining
    assert db.json("cleanup", "--days", "5", "--dry-run")["executions"] == 0


def test_cleanup_dry_run_counts_old_dead_letters_of_unfinished_executions(
    empty_db: Database,
) -> None:
    async def arrange(backend: Backend) -> None:
        clock = PastClock(timedelta(days=10))
        async with Stent.bootstrap(backend, serve=True, poll_interval=0.05, queues=[None],
                                   executor={"clock": clock}) as ex:
            await ex.dispatch(wf.survives_explosion, "kaboom", execution_id="survivor")
            for _ in range(400):
                if await ex.list_dead_letters():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("no dead letter was written")

    empty_db.call(arrange)
    dry = empty_db.json("cleanup", "--days", "5", "--dry-run")
    assert (dry["executions"], dry["dead_letters"], dry["dead_letters_of_executions"]) == (0, 1, 0)
    real = empty_db.json("cleanup", "--days", "5")
    assert (real["executions"], real["dead_letters"]) == (0, 1)
    assert empty_db.json("dlq", "list") == []
    assert empty_db.json("show", "survivor")["state"] in ("running", "pending")


def test_cleanup_needs_days(seeded_db: Database) -> None:
    assert seeded_db.stent("cleanup").returncode == 2
    assert seeded_db.stent("cleanup", "--days", "-1").returncode == 2
    assert seeded_db.stent("cleanup", "--days", "soon").returncode == 2

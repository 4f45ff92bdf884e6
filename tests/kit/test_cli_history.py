"""``stent history export ID``: the recorded history as JSON, for replay tests (SPEC §13)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from stent.cli import main
from stent_postgres import SQLiteBackend
from stent_testing import record_history, replay

from .workflows import KIT, ORDER_RESULT, order


@pytest.fixture(autouse=True)
def _no_database_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STENT_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture
def database(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A SQLite database holding one finished order: its URL and the history recorded."""
    path = tmp_path / "stent.sqlite"

    async def arrange() -> dict[str, Any]:
        backend = SQLiteBackend(path)
        try:
            return await record_history(order, "o-1", execution_id="order-o-1",
                                        backend=backend, registry=KIT)
        finally:
            await backend.close()

    return f"sqlite:///{path}", asyncio.run(arrange())


def test_export_prints_the_history_as_json(
    database: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, recorded = database
    assert main(["history", "export", "order-o-1", "--db", url]) == 0
    assert json.loads(capsys.readouterr().out) == recorded


def test_exported_history_replays(
    database: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url, _ = database
    main(["history", "export", "order-o-1", "--db", url])
    golden = tmp_path / "order.json"
    golden.write_text(capsys.readouterr().out)
    assert replay(golden, order).value == ORDER_RESULT


def test_export_reads_the_database_from_the_environment(
    database: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = database
    monkeypatch.setenv("STENT_DATABASE_URL", url)
    assert main(["history", "export", "order-o-1"]) == 0
    assert json.loads(capsys.readouterr().out)["execution_id"] == "order-o-1"


def test_compact_export_is_one_line(
    database: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, recorded = database
    main(["history", "export", "order-o-1", "--db", url, "--compact"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out) == recorded


def test_unknown_execution_exits_1_naming_it(
    database: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = database
    assert main(["history", "export", "no-such-id", "--db", url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no-such-id" in captured.err


def test_export_without_a_database_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "export", "order-o-1"]) == 2
    assert "--db" in capsys.readouterr().err


def test_history_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history"]) == 2
    assert "stent history export ID" in capsys.readouterr().err


def test_export_needs_an_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "export"]) == 2


def test_a_missing_sqlite_file_is_reported_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothere.sqlite"
    assert main(["history", "export", "x", "--db", f"sqlite:///{missing}"]) == 1
    assert "no SQLite database" in capsys.readouterr().err
    assert not missing.exists()

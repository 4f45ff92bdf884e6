"""A database password never appears in anything ``stent`` prints: results, errors (a
connection refused included), usage errors, or a worker's logs."""

from __future__ import annotations

import pytest

from .conftest import HERE, run_stent, stent_env

CANARY = "s3cr3t-canary"
#: nothing listens on port 1: every connection is refused
UNREACHABLE = f"postgresql://stent:{CANARY}@127.0.0.1:1/stent"

COMMANDS = [
    ["init-db"],
    ["list"],
    ["show", "some-id"],
    ["tasks", "list", "some-id"],
    ["tasks", "show", "some-id"],
    ["stats"],
    ["dlq", "list"],
    ["dlq", "show", "some-id"],
    ["dlq", "replay", "some-id"],
    ["dlq", "replay-all"],
    ["dlq", "discard", "some-id"],
    ["cleanup", "--days", "7"],
    ["cleanup", "--days", "7", "--dry-run"],
    ["history", "export", "some-id"],
    ["worker", "cli_workflows"],
]


def _assert_clean(proc: object) -> None:
    out = getattr(proc, "stdout", "") + getattr(proc, "stderr", "")
    assert CANARY not in out, out
    assert CANARY.replace("-", "%2D") not in out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_connection_errors_never_show_the_password(command: list[str]) -> None:
    proc = run_stent(*command, "--db", UNREACHABLE, cwd=HERE)
    assert proc.returncode == 1, proc.stderr
    assert "stent:***@127.0.0.1:1" in proc.stderr  # the masked DSN says where it failed
    assert "Traceback" not in proc.stderr
    _assert_clean(proc)


@pytest.mark.parametrize("variable", ["STENT_DATABASE_URL", "DATABASE_URL"])
@pytest.mark.parametrize("command", [["stats", "--json"], ["worker", "cli_workflows"]],
                         ids=lambda c: c[0])
def test_password_from_the_environment_is_not_shown(variable: str, command: list[str]) -> None:
    proc = run_stent(*command, env=stent_env(**{variable: UNREACHABLE}), cwd=HERE)
    assert proc.returncode == 1
    _assert_clean(proc)


@pytest.mark.parametrize("argv", [
    # --db before an unknown command: argparse quotes what it could not parse
    ["--db", UNREACHABLE, "no-such-command"],
    [UNREACHABLE],
    ["list", UNREACHABLE],
    ["list", "--db", f"mysql://stent:{CANARY}@db/stent"],
    ["list", "--db", f"stent:{CANARY}@db/stent"],  # no scheme
    ["list", "--db", UNREACHABLE, "--schema", "not a schema"],
    ["list", "--db", UNREACHABLE, "--limit", "lots"],
])
def test_usage_errors_never_show_the_password(argv: list[str]) -> None:
    proc = run_stent(*argv)
    assert proc.returncode == 2, proc.stderr
    _assert_clean(proc)


def test_percent_encoded_password_is_not_shown_either() -> None:
    url = "postgresql://stent:p%40ss%2Fw0rd-canary@127.0.0.1:1/stent"
    proc = run_stent("stats", "--db", url)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "w0rd-canary" not in out and "p@ss/w0rd" not in out

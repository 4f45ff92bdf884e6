"""The full worker SIGKILL storm on PostgreSQL (issue 7): N worker processes x 8 slots run
1,000 workflows (5 sequential steps, a durable sleep, a fan-out of 3) while one random worker
is SIGKILLed every 2-6 s and restarted; the chaos oracle (tests/chaos/oracle.py) judges the
run and the takeover time of every task the killed workers held is measured.

    uv run python scripts/chaos/storm.py [--workflows 1000] [--workers 3] [--seed N] [--record]

Uses the test server (``$STENT_TEST_POSTGRES_DSN``, default
``postgresql://postgres@127.0.0.1:5432/test``) on a schema of its own, dropped afterwards.
Writes the result as JSON (``--out``, printed too); ``--record`` also writes its figures
into scripts/chaos/README.md. Exits 1 when the run is not clean.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stent_testing.pg import create_test_backend, dispose_test_backend  # noqa: E402

from tests.chaos.storm import StormConfig, run_storm  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- last-result -->", "<!-- /last-result -->"


def summary(result: dict[str, Any], command: str) -> str:
    o, t, cfg = result["oracle"], result["takeover_s"], result["config"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    rows = [
        ("verdict", "clean" if result["ok"] else "NOT CLEAN"),
        ("command", f"`{command}`"),
        ("commit (HEAD; working tree may differ)", commit),
        ("seed", result["seed"]),
        ("workers x slots", f"{cfg['workers']} x {cfg['concurrency']}"),
        ("lease / poll max", f"{cfg['lease']} s / {cfg['poll_max']} s"),
        ("workflows (completed)", f"{result['workflows']} ({o['executions'] - o['lost']})"),
        ("step bodies recorded", o["steps"]),
        ("kills", result["kills"]),
        ("tasks held by killed workers", result["tasks_held_by_killed_workers"]),
        ("of which finished by the victim's last commit",
         result.get("held_tasks_finished_by_the_victims_last_commit", 0)),
        ("lost", o["lost"]),
        ("duplicate completions", o["problems"].get("completions_not_one", {}).get("count", 0)),
        ("duplicate body runs (all after lease losses)", o["duplicates"]),
        ("runs without a lease loss to explain them",
         o["problems"].get("ran_twice_without_lease_loss", {}).get("count", 0)),
        ("takeover p50 / p95 / max", f"{t['p50']} / {t['p95']} / {t['max']} s "
                                     f"(bound {t['bound']} s)"),
        ("sleeps checked (fired early)",
         f"{o['sleeps_checked']} "
         f"({o['problems'].get('sleep_fired_early', {}).get('count', 0)})"),
        ("elapsed", f"{result['elapsed_s']} s"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"{BEGIN}\n| figure | value |\n| --- | --- |\n{table}\n{END}"


def record(result: dict[str, Any], command: str) -> None:
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(head + summary(result, command) + tail)


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", type=int, default=1000)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--dispatch-seconds", type=float, default=100.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", type=Path)
    p.add_argument("--record", action="store_true", help="write the figures into README.md")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"chaos seed: {seed} (replay with --seed {seed})", flush=True)
    cfg = StormConfig(seed=seed, workers=args.workers, workflows=args.workflows,
                      dispatch_s=args.dispatch_seconds, timeout=300.0)
    backend = await create_test_backend(max_pool_size=20)
    workdir = Path(tempfile.mkdtemp(prefix="stent-storm-"))
    try:
        result = await run_storm(cfg, backend, workdir)
    finally:
        await dispose_test_backend(backend)
    if args.out:
        args.out.write_text((workdir / "result.json").read_text())
    print(f"worker logs and ledger: {workdir}")
    if args.record:
        command = "uv run python scripts/chaos/storm.py " + " ".join(sys.argv[1:])
        record(result, command.replace(" --record", "").strip())
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

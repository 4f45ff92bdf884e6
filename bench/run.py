"""Stent's own benchmark: the four workloads of the peers harness, on our engine.

    uv run python bench/run.py [--backend sqlite] [--workloads W1,W2,W3,W4] [--reps 3]
                               [--json out.json] [--profile DIR]

Each (workload, rep) runs in a fresh child process (``bench/run.py --child ...``) against a
fresh SQLite file in its own temporary directory, so runs never share a database, a warm
cache or an event loop. Every child runs one untimed ``chain(-1, 1)`` before the clock
starts (as the peers harness does). The parent collects one JSON line per child and prints a table
with the median and the individual reps.

Workloads (the same as /work/shared/bench-peers/workloads.py):

* W1: 500 workflows ``chain(i, 3)``, dispatched up front, then waited in order; one
  in-process worker at ``max_concurrency=16``: workflows/s and steps/s (1,500 steps).
* W2: ``chain(i, 1)``, dispatch to result, 50 in a row (3 more warm-ups): p50/p95 ms.
* W3: one ``chain(0, 300)``: ms per step.
* W4: one ``fanout(200)`` (``add1.map(range(200))`` then ``sum``): steps/s.

Where the backend exposes ``stats`` (SQLiteBackend: ``batches``/``commits``/``operations``),
the commits made inside the timed window are reported per step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stent import Stent

HERE = Path(__file__).resolve()
ALL_WORKLOADS = ("W1", "W2", "W3", "W4")
CONCURRENCY = 16
CHILD_TIMEOUT_S = 600.0

# Targets from the issue (SQLite): W1 >= 1,000 steps/s, W3 <= 1 ms per step.
TARGETS: dict[str, tuple[str, str, float]] = {
    "W1": ("steps_per_s", ">=", 1000.0),
    "W3": ("per_step_ms", "<=", 1.0),
}


# -- the durable functions (the same shapes as the peers' adapters) ------------------------------
@Stent.durable
async def add1(x: int) -> int:
    return x + 1


@Stent.durable
async def chain(x: int, n: int) -> int:
    for _ in range(n):
        x = await add1(x)
    return x


@Stent.durable
async def fanout(n: int) -> int:
    values = await add1.map(range(n))
    return sum(values)


# -- child side ----------------------------------------------------------------------------------
@dataclass
class Harness:
    """A started executor and worker on a fresh database."""

    executor: Stent
    backend: Any
    worker: asyncio.Task[None]

    def commits(self) -> dict[str, int] | None:
        stats = getattr(self.backend, "stats", None)
        return dict(stats) if isinstance(stats, dict) else None

    async def run(self, fn: Any, *args: Any) -> Any:
        eid = await self.executor.dispatch(fn, *args)
        return await self.result(eid)

    async def result(self, eid: str) -> Any:
        res = await self.executor.wait_for(eid)
        if not res.ok:
            raise RuntimeError(f"execution {eid} failed: {res.error!r}")
        return res.value


def make_backend(kind: str, workdir: str) -> Any:
    if kind == "sqlite":
        from stent_postgres import SQLiteBackend

        return SQLiteBackend(os.path.join(workdir, "bench.sqlite3"))
    raise SystemExit(f"unsupported backend {kind!r} (only 'sqlite' is wired up)")


async def start(kind: str, workdir: str) -> Harness:
    backend = make_backend(kind, workdir)
    await backend.init_db()
    executor = Stent(backend=backend)
    worker = asyncio.create_task(executor.serve(max_concurrency=CONCURRENCY))
    await asyncio.wait_for(executor.wait_until_ready(), 30)
    return Harness(executor, backend, worker)


async def stop(h: Harness) -> None:
    h.worker.cancel()
    try:
        await h.worker
    except asyncio.CancelledError:
        pass
    await asyncio.wait_for(h.executor.shutdown(), 30)
    await h.backend.close()


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _expect(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


async def w1(h: Harness) -> dict[str, Any]:
    n, steps = 500, 3
    t0 = time.perf_counter()
    ids = [await h.executor.dispatch(chain, i, steps) for i in range(n)]
    dispatch_s = time.perf_counter() - t0
    results = [await h.result(eid) for eid in ids]
    wall = time.perf_counter() - t0
    for i, r in enumerate(results):
        _expect(r, i + steps, f"W1 workflow {i}")
    return {"wall_s": wall, "steps": n * steps, "dispatch_s": dispatch_s,
            "workflows_per_s": n / wall, "steps_per_s": n * steps / wall}


async def w2(h: Harness) -> dict[str, Any]:
    n = 50
    lat: list[float] = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        r = await h.run(chain, i, 1)
        lat.append((time.perf_counter() - t) * 1000.0)
        _expect(r, i + 1, f"W2 run {i}")
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "steps": n, "p50_ms": _percentile(lat, 50),
            "p95_ms": _percentile(lat, 95), "mean_ms": statistics.fmean(lat),
            "max_ms": max(lat)}


async def w3(h: Harness) -> dict[str, Any]:
    steps = 300
    t0 = time.perf_counter()
    r = await h.run(chain, 0, steps)
    wall = time.perf_counter() - t0
    _expect(r, steps, "W3")
    return {"wall_s": wall, "steps": steps, "per_step_ms": wall * 1000.0 / steps}


async def w4(h: Harness) -> dict[str, Any]:
    width = 200
    t0 = time.perf_counter()
    r = await h.run(fanout, width)
    wall = time.perf_counter() - t0
    _expect(r, width * (width + 1) // 2, "W4")
    return {"wall_s": wall, "steps": width, "steps_per_s": width / wall,
            "per_step_ms": wall * 1000.0 / width}


WORKLOADS: dict[str, Callable[[Harness], Awaitable[dict[str, Any]]]] = {
    "W1": w1, "W2": w2, "W3": w3, "W4": w4,
}


async def child_main(workload: str, backend: str, profile: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stent-bench-") as workdir:
        h = await start(backend, workdir)
        try:
            # Untimed warm-ups, as in the peers harness: one chain(-1, 1) before every
            # workload (connection, statement cache, lazy imports), three more for W2.
            _expect(await h.run(chain, -1, 1), 0, "warm-up")
            if workload == "W2":
                for i in range(3):
                    _expect(await h.run(chain, i, 1), i + 1, "W2 warm-up")
            before = h.commits()
            cpu0 = time.process_time()
            prof = None
            if profile:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            metrics = await WORKLOADS[workload](h)
            if prof is not None:
                prof.disable()
                prof.dump_stats(profile)
            metrics["cpu_s"] = time.process_time() - cpu0
            after = h.commits()
            if before is not None and after is not None:
                d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                metrics["commits"] = d.get("commits", 0)
                metrics["write_ops"] = d.get("operations", 0)
                metrics["commits_per_step"] = d.get("commits", 0) / metrics["steps"]
                metrics["write_ops_per_step"] = d.get("operations", 0) / metrics["steps"]
        finally:
            await stop(h)
    return metrics


# -- parent side ---------------------------------------------------------------------------------
HEADLINE: dict[str, list[tuple[str, str, str]]] = {
    # workload -> [(metric key, label, format)]
    "W1": [("workflows_per_s", "workflows/s", "{:.0f}"), ("steps_per_s", "steps/s", "{:.0f}")],
    "W2": [("p50_ms", "p50 ms", "{:.2f}"), ("p95_ms", "p95 ms", "{:.2f}")],
    "W3": [("per_step_ms", "ms/step", "{:.3f}")],
    "W4": [("steps_per_s", "steps/s", "{:.0f}")],
}
EXTRA: list[tuple[str, str, str]] = [
    ("cpu_s", "cpu s / wall s", ""),
    ("commits_per_step", "commits/step", "{:.3f}"),
    ("write_ops_per_step", "write ops/step", "{:.2f}"),
]


def run_child(workload: str, backend: str, profile: str | None) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--child", workload, "--backend", backend]
    if profile:
        cmd += ["--profile", profile]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"{workload} child failed with exit code {proc.returncode}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return dict(json.loads(lines[-1]))


def git_revision() -> str:
    """The workspace commit, with ``+dirty`` when packages/ has uncommitted changes."""
    root = HERE.parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "packages"], cwd=root,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    return {
        "commit": git_revision(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fmt(v: float, spec: str) -> str:
    return spec.format(v) if spec else f"{v:.2f}"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    out = ["| workload | metric | median | reps |", "| --- | --- | --- | --- |"]
    for w, reps in results.items():
        rows = list(HEADLINE[w])
        rows += [m for m in EXTRA if m[0] in reps[0]]
        for key, label, spec in rows:
            if key == "cpu_s":
                vals = [r["cpu_s"] / r["wall_s"] for r in reps]
                spec = "{:.2f}"
            else:
                vals = [float(r[key]) for r in reps]
            med = statistics.median(vals)
            out.append(f"| {w} | {label} | {fmt(med, spec)} | "
                       f"{', '.join(fmt(v, spec) for v in vals)} |")
    return "\n".join(out)


def verdicts(results: dict[str, list[dict[str, Any]]], backend: str) -> list[str]:
    lines = []
    if backend != "sqlite":
        return lines
    for w, (key, op, bound) in TARGETS.items():
        if w not in results:
            continue
        med = statistics.median(float(r[key]) for r in results[w])
        ok = med >= bound if op == ">=" else med <= bound
        lines.append(f"{w} {key} median {med:.3f} (target {op} {bound:g}): "
                     f"{'PASS' if ok else 'FAIL'}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="sqlite", choices=["sqlite"])
    ap.add_argument("--workloads", default=",".join(ALL_WORKLOADS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="write all results (and machine info) to this file")
    ap.add_argument("--profile", help="directory: dump a cProfile per child (timed window only)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        metrics = asyncio.run(child_main(args.child, args.backend, args.profile))
        print(json.dumps(metrics))
        return

    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; known: {list(WORKLOADS)}")
    info = machine()
    print(f"# Stent bench: backend={args.backend} reps={args.reps} commit={info['commit']} "
          f"nproc={info['nproc']} python={info['python']} {info['date']}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for w in workloads:
        for rep in range(args.reps):
            prof = None
            if args.profile:
                os.makedirs(args.profile, exist_ok=True)
                prof = os.path.join(args.profile, f"{w}-rep{rep + 1}.prof")
            r = run_child(w, args.backend, prof)
            results.setdefault(w, []).append(r)
            head = ", ".join(f"{label} {fmt(float(r[k]), spec)}" for k, label, spec in HEADLINE[w])
            print(f"  {w} rep {rep + 1}: {head} (wall {r['wall_s']:.2f} s)", flush=True)
    print()
    print(table(results))
    v = verdicts(results, args.backend)
    if v:
        print()
        print("\n".join(v))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "backend": args.backend, "reps": args.reps,
                       "results": results, "verdicts": v}, f, indent=2)


if __name__ == "__main__":
    main()

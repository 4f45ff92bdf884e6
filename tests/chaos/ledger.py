"""The chaos ledger: what step bodies really did, kept outside Stent's tables.

Every worker process appends to a file of its own (``ledger-<pid>.jsonl``), one JSON object
per line, written with one ``os.write`` on an ``O_APPEND`` descriptor and fsynced before the
body goes on: a SIGKILL right after a ``start`` line cannot lose it, so a body that was
killed mid-run is still counted as a run. The checker (``oracle.py``) pairs each ``start``
with its ``end`` (missing when the process died) by the run id.

Entries:

- ``start``: ``run`` (id of this body run), ``key`` (the step's logical name, from its
  arguments), ``fn``, ``task`` and ``exec`` (``Stent.context()``), ``token`` (the fence the run
  holds: ``[holder task id, fence, "own" | "inline"]``), ``pid``, ``t`` (wall time).
- ``end``: ``run``, ``outcome`` (``ok``, ``cancelled``, ``error``), ``pid``, ``t``.
- ``woke``: ``exec``, ``clock`` (the worker's engine clock when a workflow continued after its
  durable sleep), ``pid``, ``t``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class LedgerWriter:
    """Appends entries to this process's ledger file, each one durable before it returns."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / f"ledger-{os.getpid()}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, **entry: Any) -> None:
        line = json.dumps({**entry, "pid": os.getpid()}, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode())
        os.fsync(self._fd)


@dataclass
class Run:
    """One run of a step body, as the ledger saw it."""

    run: str
    key: str
    fn: str
    task: str
    execution: str
    holder: str
    fence: int
    token_kind: str
    pid: int
    start: float
    end: float | None = None
    outcome: str | None = None


@dataclass
class Ledger:
    """Everything every process wrote."""

    runs: list[Run]
    #: execution id -> engine-clock times (epoch seconds) at which it continued after a sleep
    woke: dict[str, list[float]]
    #: lines that could not be parsed (a torn last line is impossible with one write per
    #: line, so any of these is a finding)
    bad_lines: int


def _entries(directory: Path) -> Iterator[dict[str, Any] | None]:
    for path in sorted(directory.glob("ledger-*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError:
                yield None


def read_ledger(directory: str | os.PathLike[str]) -> Ledger:
    """Read and pair every process's entries."""
    runs: dict[str, Run] = {}
    ends: dict[str, dict[str, Any]] = {}
    woke: dict[str, list[float]] = {}
    bad = 0
    for e in _entries(Path(directory)):
        if e is None:
            bad += 1
        elif e["ev"] == "start":
            holder, fence, kind = e["token"]
            runs[e["run"]] = Run(e["run"], e["key"], e["fn"], e["task"], e["exec"], holder,
                                 int(fence), kind, e["pid"], e["t"])
        elif e["ev"] == "end":
            ends[e["run"]] = e
        elif e["ev"] == "woke":
            woke.setdefault(e["exec"], []).append(e["clock"])
    for run_id, e in ends.items():
        r = runs.get(run_id)
        if r is None:
            bad += 1  # an end without a start
            continue
        r.end, r.outcome = e["t"], e["outcome"]
    return Ledger(sorted(runs.values(), key=lambda r: r.start), woke, bad)

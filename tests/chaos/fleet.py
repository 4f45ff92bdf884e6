"""Worker processes of a chaos run (``python -m tests.chaos.app``): start, SIGKILL, SIGSTOP,
SIGCONT, restart, and when each one died (the checker ends a killed process's unfinished
runs at its death)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def target_of(backend: Any) -> tuple[str, str | None]:
    """What a worker process opens to reach ``backend``'s database: (DSN, schema) for
    PostgreSQL, (file, None) for SQLite."""
    schema = getattr(backend, "schema", None)
    return (backend.dsn, schema) if schema else (str(backend.path), None)


@dataclass(eq=False)
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def worker_id(self) -> str:
        return f"chaos-{self.pid}"  # what tests.chaos.app passes to serve()


@dataclass(eq=False)
class Fleet:
    """The worker processes serving one database (a PostgreSQL schema or a SQLite file)."""

    backend: Any
    workdir: Path
    concurrency: int = 8
    lease: float = 3.0
    poll: float = 0.1
    poll_max: float = 0.5
    max_crash_recoveries: int = 10
    #: the worker's module (``python -m <module> TARGET --ledger ...``) and extra arguments
    #: after the common ones (e.g. ``tests.chaos.infra_app`` with ``--redis URL``)
    module: str = "tests.chaos.app"
    extra_args: tuple[str, ...] = ()
    workers: list[WorkerProcess] = field(default_factory=list)
    #: pid -> wall time of its death (when it was killed, or first seen dead)
    deaths: dict[int, float] = field(default_factory=dict)
    started: int = 0
    target: str = field(init=False)
    schema: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.target, self.schema = target_of(self.backend)
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def ledger_dir(self) -> Path:
        return self.workdir / "ledger"

    def start(self) -> WorkerProcess:
        args = [sys.executable, "-m", self.module, self.target,
                "--ledger", str(self.ledger_dir), "--concurrency", str(self.concurrency),
                "--lease", str(self.lease), "--poll", str(self.poll),
                "--poll-max", str(self.poll_max),
                "--max-crash-recoveries", str(self.max_crash_recoveries)]
        if self.schema:
            args += ["--schema", self.schema]
        args += self.extra_args
        env = {**os.environ,
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.started += 1
        log = self.workdir / "logs" / f"worker-{self.started}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        w = WorkerProcess(proc, log)
        self.workers.append(w)
        return w

    def kill(self, w: WorkerProcess) -> float:
        """SIGKILL ``w`` and wait for it; returns the wall time of the kill."""
        t = time.time()
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait(10)
        self._dead(w, t)
        return t

    def pause(self, w: WorkerProcess) -> None:
        w.proc.send_signal(signal.SIGSTOP)

    def resume(self, w: WorkerProcess) -> None:
        w.proc.send_signal(signal.SIGCONT)

    def reap(self) -> list[WorkerProcess]:
        """The workers that died by themselves since the last call (a poison step)."""
        gone = [w for w in self.workers if w.proc.poll() is not None]
        for w in gone:
            self._dead(w, time.time())
        return gone

    def _dead(self, w: WorkerProcess, t: float) -> None:
        self.deaths.setdefault(w.pid, t)
        if w in self.workers:
            self.workers.remove(w)

    async def keep_alive(self, size: int, every: float = 0.1) -> None:
        """Restart workers that died by themselves, keeping ``size`` alive (until cancelled)."""
        while True:
            self.reap()
            while len(self.workers) < size:
                self.start()
            await asyncio.sleep(every)

    def close(self) -> None:
        for w in list(self.workers):
            if w.proc.poll() is None:
                self.kill(w)  # SIGKILL ends a stopped process too, without running it
            else:
                self._dead(w, time.time())

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted((self.workdir / "logs").glob("*.log")))

"""A Stent worker in a child process (``python -m tests.redis.redis_app``), for the tests that
need wake-ups to cross a process boundary."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """A worker process on a shared SQLite file.

    Args:
        db: the SQLite file.
        redis_url: the notification backend's URL, or None for none (polling only).
        prefix: the channel prefix.
        poll_interval: the worker's ``serve(poll_interval=...)``.
        log: where its stderr goes (logging at INFO, DEBUG for the Redis backend).
    """

    def __init__(self, db: Path, redis_url: str | None, prefix: str, poll_interval: float,
                 log: Path, client_name: str = "stent-test-worker") -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.redis.redis_app", str(db), redis_url or "-",
                 prefix, str(poll_interval), client_name],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
            )

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait until the worker printed ``READY`` (it claims work and listens)."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        except TimeoutError:
            line = b""
        if line.strip() != b"READY":
            self.stop()
            raise AssertionError(f"worker did not start:\n{self.log_text()}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

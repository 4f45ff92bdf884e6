"""Run a test module in a separate ``pytest`` process, as a user's project would: the stent
plugin comes from its entry point, nothing from this repository's configuration."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Outcome:
    """A finished pytest run."""

    returncode: int
    output: str
    seconds: float

    def count(self, what: str) -> int:
        """How many tests ended as ``what`` (``passed``, ``failed``, ...) per the summary."""
        found = re.findall(rf"(\d+) {what}", self.output)
        return int(found[-1]) if found else 0


def run_pytest(directory: Path, source: str, *args: str, name: str = "test_user.py",
               timeout: float = 120.0) -> Outcome:
    """Write ``source`` as ``directory/name`` and run pytest on it there.

    Args:
        directory: an empty directory (``tmp_path``): no configuration file above it.
        source: the test module.
        *args: extra pytest arguments (``-o asyncio_mode=strict``, ``--stent-backend=...``).
        name: the module's file name.
        timeout: real seconds before the run counts as hung.
    """
    (directory / name).write_text(source, encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "COV_")) and k != "PYTHONPATH"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(directory), "-o", "asyncio_default_fixture_loop_scope=function", *args, name],
        cwd=directory, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    return Outcome(proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - started)

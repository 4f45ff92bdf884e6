"""Redis servers for the tests: the shared one (``$STENT_TEST_REDIS_URL``, default
``redis://127.0.0.1:6379/0``) and private ``redis-server`` processes that a test may kill
and restart on the same port.

When the shared server is unreachable, or ``redis-server`` is not installed, tests that need
them are skipped with the reason, unless ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
from stent_redis import mask_url

URL_ENV = "STENT_TEST_REDIS_URL"
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it under ``CI=true``."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)")
    pytest.skip(reason)  # outside CI only: under CI=true this failed just above


def shared_redis_url() -> str:
    """The shared test server's URL; skips (or fails under CI) when it does not answer."""
    url = os.environ.get(URL_ENV) or DEFAULT_URL
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        skip_or_fail(f"no Redis at {mask_url(url)} (set ${URL_ENV} to use another): "
                     f"{type(exc).__name__}: {exc}")
    return url


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of the test's own, without persistence.

    Args:
        workdir: where the server runs and writes its log.
        port: a fixed port (a free one by default); :meth:`start` after :meth:`kill` reuses it.
        password: ``requirepass`` when given.
    """

    def __init__(self, workdir: Path, port: int | None = None,
                 password: str | None = None) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(exe):
            skip_or_fail("redis-server is not installed")
        self.exe = exe
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def admin(self) -> redis.Redis:
        """A synchronous client for inspecting the server (one connection)."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=5, single_connection_client=True)

    def start(self) -> None:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        with (self.workdir / f"redis-{self.port}.log").open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                client = self.admin()
                try:
                    client.ping()
                    return
                finally:
                    client.close()
            except (redis.RedisError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.workdir / f"redis-{self.port}.log").read_text()
                    raise RuntimeError(f"redis-server did not start: {log}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a shutdown) and wait for it to go."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

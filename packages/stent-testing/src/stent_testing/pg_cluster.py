"""A throwaway, private PostgreSQL cluster for tests that must stop and start the server.

Outage tests cannot use the shared test server (other tests run against it in parallel), so
:class:`PrivateCluster` runs ``initdb`` in a temporary directory and serves it on a free
local port, with settings made for speed rather than safety (``fsync=off``: a crash of the
machine loses the cluster, which is thrown away anyway)::

    cluster = PrivateCluster()           # finds initdb, or skips the test (fails under CI)
    cluster.init()                       # initdb, a few seconds at most
    cluster.start()
    backend = PostgresBackend(cluster.dsn)
    ...
    cluster.stop()                       # the outage: connections are cut, ports closed
    cluster.start()                      # same data, same port
    cluster.destroy()                    # stop and delete everything

The calls block (they run ``pg_ctl``): from async code, run them with
``await asyncio.to_thread(cluster.stop)`` so the event loop under test keeps going.

PostgreSQL refuses to run as root. When the tests run as root, the cluster's directory is
given to the ``postgres`` user (or ``$STENT_TEST_PG_USER``) and the server runs as that user.
The binaries are found through ``$STENT_TEST_PG_BIN``, then ``PATH``, then ``pg_config
--bindir``, then ``/usr/lib/postgresql/<version>/bin``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import pytest

BIN_ENV = "STENT_TEST_PG_BIN"
USER_ENV = "STENT_TEST_PG_USER"

#: fast and small: this cluster holds a few rows and is deleted after the test
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "60",
    "shared_buffers": "16MB",
    "max_wal_size": "64MB",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    candidates: list[Path] = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            if out:
                candidates.append(Path(out))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: p.parent.name, reverse=True)
    candidates.extend(versions)
    for c in candidates:
        if all((c / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return c
    return None


def unavailable_reason() -> str | None:
    """Why a private cluster cannot be made here (None when it can)."""
    if find_bin_dir() is None:
        return (f"no PostgreSQL server binaries (initdb, pg_ctl) found; install them or set "
                f"{BIN_ENV}")
    if os.geteuid() == 0:
        import pwd

        user = os.environ.get(USER_ENV, "postgres")
        try:
            pwd.getpwnam(user)
        except KeyError:
            return (f"running as root, and PostgreSQL refuses root: no user {user!r} to run "
                    f"the private cluster as (set {USER_ENV})")
    return None


def require_private_cluster() -> None:
    """Skip the test (fail it under ``CI=true``) if no private cluster can be made."""
    reason = unavailable_reason()
    if reason is not None:
        _unavailable(reason)


def _unavailable(reason: str) -> NoReturn:
    message = f"cannot run a private PostgreSQL cluster: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: these tests are required)")
    pytest.skip(message)  # outside CI only: under CI=true this failed just above


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """A PostgreSQL cluster of its own in a temporary directory, on a free local port.

    Args:
        bin_dir: where ``initdb``/``pg_ctl`` live (found automatically by default).
        settings: extra ``postgresql.conf`` settings (values as SQL literals, e.g. ``"'on'"``).

    Attributes:
        port: the TCP port (chosen by :meth:`init`, kept across restarts).
        directory: the temporary directory (data, socket and log).
    """

    def __init__(self, bin_dir: Path | str | None = None,
                 settings: dict[str, str] | None = None) -> None:
        found = Path(bin_dir) if bin_dir is not None else find_bin_dir()
        if found is None:
            _unavailable(unavailable_reason() or "initdb not found")
        self.bin_dir: Path = found
        self.settings = {**_SETTINGS, **(settings or {})}
        self.port = 0
        self.directory: Path | None = None
        self._run_as: dict[str, Any] = {}
        self._running = False

    # -- paths -----------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self._dir / "data"

    @property
    def log_file(self) -> Path:
        """The server's log (read it when a start fails)."""
        return self._dir / "server.log"

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            raise RuntimeError("call init() first")
        return self.directory

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres``."""
        if not self.port:
            raise RuntimeError("call init() first")
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was called more recently than :meth:`stop`."""
        return self._running

    # -- lifecycle --------------------------------------------------------------------------
    def init(self) -> PrivateCluster:
        """``initdb`` a new cluster (superuser ``postgres``, trust authentication)."""
        if self.directory is not None:
            raise RuntimeError("this cluster was initialised already")
        self.directory = Path(tempfile.mkdtemp(prefix="stent-pg-"))
        try:
            if os.geteuid() == 0:
                import pwd

                pw = pwd.getpwnam(os.environ.get(USER_ENV, "postgres"))
                os.chown(self.directory, pw.pw_uid, pw.pw_gid)
                self._run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
                                "env": {**os.environ, "HOME": str(self.directory)}}
            self._pg("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                     "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
            self.port = free_port()
            conf = {**self.settings, "port": str(self.port),
                    "unix_socket_directories": f"'{self.directory}'"}
            with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as f:
                f.write("\n# stent_testing.pg_cluster\n")
                f.writelines(f"{k} = {v}\n" for k, v in conf.items())
        except BaseException:
            self.destroy()
            raise
        return self

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                 "-t", str(int(timeout)), "start", timeout=timeout + 10)
        self._running = True

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server: ``fast`` (disconnect everyone, clean shutdown) or ``immediate``
        (as if it crashed)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"invalid stop mode {mode!r}")
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t",
                 str(int(timeout)), "stop", timeout=timeout + 10)
        self._running = False

    def destroy(self) -> None:
        """Stop the server if it runs and delete the directory (safe to call twice)."""
        if self.directory is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None
        self._running = False

    def __enter__(self) -> PrivateCluster:
        if self.directory is None:
            self.init()
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.destroy()

    def _pg(self, tool: str, *args: str, timeout: float = 120.0) -> None:
        cmd = [str(self.bin_dir / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=self._dir, check=False, **self._run_as)
        if proc.returncode != 0:
            log = ""
            with contextlib.suppress(OSError, RuntimeError):
                log = self.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"{tool} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
                + (f"\nserver log:\n{log}" if log else "")
            )

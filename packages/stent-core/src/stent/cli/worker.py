"""``stent worker MODULE [MODULE...]``: import the modules that define durable functions and
serve them until SIGTERM or SIGINT.

The first SIGTERM/SIGINT drains the worker: it stops claiming, running steps get ``--grace``
seconds to finish (then they are cancelled and given back), tasks waiting on steps are
suspended, every lease is released, and the command exits 0. A second signal stops at once
(running steps are cancelled and given back). If the drain has not ended ``--grace`` plus
:data:`DRAIN_SLACK` seconds after the signal (a database that stopped answering), the
command gives up and exits 1; the leases then expire and other workers take over.

Logs go to stderr (``--log-level``, default INFO); a password never appears in them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from stent import Stent
from stent.durations import parse_duration
from stent.names import check_tags

from .dburl import mask_url, remember_secrets, scrub
from .errors import EXIT_INVALID, EXIT_OK, CliError, UnavailableError
from .output import fmt_queue
from .session import add_db_options, describe_backend, open_backend, queue_name, run_async

__all__ = ["DRAIN_SLACK", "import_modules", "register", "run"]

log = logging.getLogger("stent.cli.worker")

DRAIN_SLACK = 15.0
"""Seconds past ``--grace`` after which a drain that has not ended is abandoned."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def register(subparsers: Any) -> None:
    """Add the ``worker`` command to the ``stent`` parser."""
    parser = subparsers.add_parser(
        "worker", help="import modules of durable functions and serve them",
        description="Import MODULE(s) (dotted names, or .py files; the current directory is "
                    "importable), create or migrate the schema, and run a worker until "
                    "SIGTERM/SIGINT, which drain it gracefully.",
    )
    parser.add_argument("modules", nargs="+", metavar="MODULE",
                        help="module defining durable functions (myapp.workflows, or a .py file)")
    parser.add_argument("--queues", type=_queue_list, action="extend", default=None,
                        metavar="Q[,Q...]",
                        help="claim only from these queues (repeatable; '@default' is the "
                             "default queue); default: every queue")
    parser.add_argument("--tags", type=_tag_list, action="extend", default=None,
                        metavar="T[,T...]",
                        help="this worker's tags: it claims untagged tasks and tasks sharing "
                             "a tag; default: no tags (claims everything)")
    parser.add_argument("--concurrency", type=_positive_int, default=10, metavar="N",
                        help="task slots (default 10)")
    parser.add_argument("--lease", type=_duration, default="5m", metavar="DURATION",
                        help="lease duration: seconds or e.g. '30s', '5m' (default 5m)")
    parser.add_argument("--poll-interval", type=_seconds, default=1.0, metavar="SECONDS",
                        help="database poll interval, the safety net under notifications "
                             "(default 1)")
    parser.add_argument("--grace", type=_seconds, default=30.0, metavar="SECONDS",
                        help="on SIGTERM/SIGINT, how long running steps may take to finish "
                             "(default 30)")
    parser.add_argument("--health-port", type=_positive_int, default=None, metavar="PORT",
                        help="serve GET /health, /ready and /metrics on this port")
    parser.add_argument("--redis", metavar="URL", default=None,
                        help="Redis URL for cross-process notifications")
    parser.add_argument("--worker-id", metavar="ID", default=None,
                        help="the id this worker writes on the tasks it leases (default: "
                             "host-pid-random)")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level on stderr (default INFO)")
    add_db_options(parser)
    parser.set_defaults(handler=run)


# -- option types ---------------------------------------------------------------------------------
def _queue_list(text: str) -> list[str | None]:
    return [queue_name(part.strip()) for part in text.split(",") if part.strip()]


def _tag_list(text: str) -> list[str]:
    try:
        return list(check_tags([p.strip() for p in text.split(",") if p.strip()]))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an int >= 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected seconds >= 0")
    return value


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(float(text) if _is_number(text) else text).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be positive")
    return seconds


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- logging and imports ----------------------------------------------------------------------------
class _ScrubbingFormatter(logging.Formatter):
    """Formats records, then takes every known password out (see
    :func:`stent.cli.dburl.scrub`): a last line of defence for messages from libraries."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``, through the scrubbing formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ScrubbingFormatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def import_modules(names: list[str]) -> list[str]:
    """Import each module (registering its durable functions); return their names.

    A name ending in ``.py`` is a file: its directory is made importable and it is imported
    by its stem. The current directory is importable too, as with ``python -m``.

    Raises:
        CliError: a module could not be imported; the message says which and why.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    imported = []
    for name in names:
        module_name = name
        if name.endswith(".py"):
            path = Path(name).resolve()
            if not path.is_file():
                raise CliError(f"cannot import {name}: no such file")
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            module_name = path.stem
        try:
            importlib.import_module(module_name)
        except Exception as exc:
            log.debug("importing %s failed:\n%s", module_name, traceback.format_exc())
            raise CliError(f"cannot import module {module_name!r}: "
                           f"{type(exc).__name__}: {exc}") from None
        imported.append(module_name)
    return imported


def _notification_backend(url: str | None) -> Any:
    """``Stent.notifications.RedisBackend(url)``, or None without ``--redis``."""
    if url is None:
        return None
    remember_secrets(url)
    try:
        return Stent.notifications.RedisBackend(url)
    except (ImportError, AttributeError, NotImplementedError) as exc:
        raise UnavailableError(
            f"--redis {mask_url(url)}: Redis notifications are not available in this "
            f"installation ({scrub(str(exc))}). Leave out --redis: workers then wake each "
            "other through the database (LISTEN/NOTIFY on PostgreSQL) and polling"
        ) from None


# -- serving ----------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """The ``stent worker`` handler."""
    configure_logging(args.log_level)
    modules = import_modules(args.modules)
    registered = sorted(Stent.default_registry.names())
    if not registered:
        log.warning("no durable functions are registered by %s: this worker can only run "
                    "built-in steps", ", ".join(modules))
    notifications = _notification_backend(args.redis)
    backend = open_backend(args, create=True)
    if args.redis is not None:
        wakeups = f"Redis at {mask_url(args.redis)}"
    elif hasattr(backend, "default_notification_backend"):
        wakeups = "the database (LISTEN/NOTIFY)"
    else:
        wakeups = "none (polling)"
    log.info("stent worker: database %s; notifications: %s; functions: %s",
             describe_backend(backend), wakeups, ", ".join(registered) or "none")
    return run_async(_serve(args, backend, notifications))


async def _serve(args: argparse.Namespace, backend: Any, notifications: Any) -> int:
    executor = Stent(backend, notification_backend=notifications)
    try:
        await backend.init_db()
        return await _serve_until_drained(args, executor)
    finally:
        with contextlib.suppress(Exception):
            await executor.shutdown()
        with contextlib.suppress(Exception):
            await backend.close()


async def _serve_until_drained(args: argparse.Namespace, executor: Stent) -> int:
    loop = asyncio.get_running_loop()
    lifecycle = executor.create_worker_lifecycle()
    options: dict[str, Any] = {
        "lifecycle": lifecycle, "worker_id": args.worker_id, "queues": args.queues,
        "tags": args.tags, "max_concurrency": args.concurrency,
        "lease_duration": args.lease, "poll_interval": args.poll_interval,
        "drain_grace_period": args.grace,
    }
    if args.health_port is not None:
        options["health_port"] = args.health_port
    serving = loop.create_task(executor.serve(**options), name="stent-worker")
    stopped: dict[str, str] = {}  # why we cancelled ``serving``, if we did

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not lifecycle.draining:
            log.info("%s: draining (no new claims; running steps have %gs to finish, "
                     "waiting tasks are suspended, leases are released)", name, args.grace)
            executor.request_worker_drain(lifecycle)
            loop.call_later(args.grace + DRAIN_SLACK, give_up)
        elif not serving.done():
            log.warning("%s again: stopping now (running steps are cancelled and given back)",
                        name)
            stopped.setdefault("why", "signal")
            serving.cancel()

    def give_up() -> None:
        if not serving.done():
            log.error("drain did not end within %gs; giving up (leases expire and other "
                      "workers take over)", args.grace + DRAIN_SLACK)
            stopped.setdefault("why", "timeout")
            serving.cancel()

    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, int(sig))
        installed.append(sig)
    announce = loop.create_task(_announce_ready(executor, lifecycle, args))
    try:
        await serving
    except asyncio.CancelledError:
        if "why" not in stopped:
            raise
    except NotImplementedError as exc:  # serve(health_port=...) in an engine without it
        raise CliError(f"--health-port is not available in this version of Stent ({exc}); "
                       "leave it out") from None
    finally:
        announce.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
    if stopped.get("why") == "timeout":
        return EXIT_INVALID
    log.info("worker %s stopped", lifecycle.worker_id)
    return EXIT_OK


async def _announce_ready(executor: Stent, lifecycle: Any, args: argparse.Namespace) -> None:
    await executor.wait_until_ready()
    queues = "all" if args.queues is None else ", ".join(fmt_queue(q) for q in args.queues)
    log.info("worker %s ready: queues %s; tags %s; concurrency %d; lease %gs",
             lifecycle.worker_id, queues, ", ".join(args.tags or []) or "none",
             args.concurrency, args.lease)


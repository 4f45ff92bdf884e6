"""``stent demo``: watch a workflow survive a killed worker.

The demo runs the order workflow of :mod:`stent.cli.demo_workflow` on a local SQLite file:

1. dispatch ``demo.place_order`` and start worker #1 as a separate process;
2. once two steps have completed and the third is running, kill worker #1 with ``SIGKILL``
   (no clean-up of any kind can run);
3. start worker #2, which takes the abandoned tasks over when worker #1's leases expire and
   finishes the workflow;
4. print which process ran which step, how often each step body ran, and what the database
   stored, and check from that data that no completed step ran again.

Exit status 0 when the workflow completed and no completed step ran twice, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import CliError

if TYPE_CHECKING:
    from stent.backend import Backend
    from stent.records import TaskRecord

__all__ = ["DemoFailed", "JournalEntry", "JournalReader", "register", "run", "run_demo"]

DEFAULT_DB_PATH = Path(".stent") / "demo.sqlite"
ORDER_ID = "A-1001"
LEASE_SECONDS = 2.0
KILL_DURING = "create_shipment"  # the step that is running when worker #1 is killed
REACH_KILL_POINT_WITHIN = 20.0  # seconds for worker #1 to get there (a cold start included)
FINISH_WITHIN = 25.0  # seconds for worker #2 to finish the workflow
POLL = 0.02
NEEDS_POSTGRES = "stent demo needs stent-postgres: pip install stent-postgres"
_SQLITE_MAGIC = b"SQLite format 3\x00"


class DemoFailed(Exception):
    """The demo could not show what it set out to show; the message says why."""


def register(subparsers: Any) -> None:
    """Add the ``demo`` command to the ``stent`` parser."""
    parser = subparsers.add_parser(
        "demo",
        help="run an order workflow, kill its worker mid-way, resume it on another",
        description=(
            "Run a sample order workflow on a local SQLite file with a real worker process, "
            "kill that worker with SIGKILL in the middle of a step, start a second worker "
            "that resumes the workflow, and show that completed steps did not run again."
        ),
    )
    parser.add_argument(
        "--db-path", type=Path, default=DEFAULT_DB_PATH, metavar="PATH",
        help=f"the SQLite file to use; an old demo database there is replaced "
             f"(default: {DEFAULT_DB_PATH})",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """The ``stent demo`` handler."""
    try:
        from stent_postgres import SQLiteBackend
    except ImportError:
        print(NEEDS_POSTGRES, file=sys.stderr)
        return 1
    db_path: Path = args.db_path

    def make_backend(path: str) -> Backend:
        return SQLiteBackend(path)

    return asyncio.run(run_demo(db_path, make_backend))


# -- the journal the step bodies write ---------------------------------------------------------
@dataclass(frozen=True)
class JournalEntry:
    """One line of the demo journal: a step body started or finished in some process."""

    step: str
    event: str
    pid: int
    time: float


class JournalReader:
    """Reads the journal incrementally; a trailing partial line waits for its newline."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[JournalEntry] = []
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[JournalEntry]:
        """The entries written since the last call."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        new: list[JournalEntry] = []
        for raw in lines:
            if not raw.strip():
                continue
            obj = json.loads(raw)
            new.append(JournalEntry(str(obj["step"]), str(obj["event"]), int(obj["pid"]),
                                    float(obj["time"])))
        self.entries.extend(new)
        return new

    def count(self, step: str, event: str, pid: int | None = None) -> int:
        """How many ``event`` lines ``step`` has (in process ``pid``, if given)."""
        return sum(1 for e in self.entries
                   if e.step == step and e.event == event and (pid is None or e.pid == pid))


# -- the demo -------------------------------------------------------------------------------------
@dataclass
class _Worker:
    number: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def label(self) -> str:
        return f"worker #{self.number}"


@dataclass
class _Demo:
    db: Path
    journal: JournalReader
    workflow: str
    t0: float = field(default_factory=time.time)
    workers: list[_Worker] = field(default_factory=list)

    # -- output --------------------------------------------------------------------------------
    def say(self, message: str, at: float | None = None) -> None:
        elapsed = (time.time() if at is None else at) - self.t0
        print(textwrap.fill(message, width=100, initial_indent=f"[{elapsed:5.1f}s] ",
                            subsequent_indent=" " * 10, break_long_words=False,
                            break_on_hyphens=False), flush=True)

    def label_of(self, pid: int) -> str:
        for w in self.workers:
            if w.pid == pid:
                return w.label
        return f"pid {pid}"

    def show_new_journal_lines(self) -> list[JournalEntry]:
        new = self.journal.poll()
        for e in new:
            what = {"start": "started", "end": "finished"}.get(e.event, e.event)
            if (e.step == self.workflow and e.event == "start"
                    and self.journal.count(self.workflow, "start") > 1):
                what = "started again: replaying (completed steps return their stored results)"
            self.say(f"{self.label_of(e.pid):<9}  {e.step:<17}  {what}", at=e.time)
        return new

    # -- worker processes ------------------------------------------------------------------------
    def start_worker(self) -> _Worker:
        number = len(self.workers) + 1
        log_path = self.db.parent / f"{self.db.stem}.worker{number}.log"
        log_file = log_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stent.cli.demo_worker", str(self.db),
             "--lease", str(LEASE_SECONDS)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )
        worker = _Worker(number, proc, log_path, log_file)
        self.workers.append(worker)
        return worker

    def check_alive(self, worker: _Worker) -> None:
        code = worker.proc.poll()
        if code is not None:
            raise DemoFailed(f"{worker.label} (pid {worker.pid}) exited on its own with status "
                             f"{code}\n{_tail(worker.log_path)}")

    def kill(self, worker: _Worker) -> None:
        os.kill(worker.pid, signal.SIGKILL)
        worker.proc.wait()
        worker.killed = True

    async def stop(self, worker: _Worker, grace: float = 5.0) -> str:
        """SIGTERM (the worker drains), then SIGKILL if it takes longer than ``grace``."""
        if worker.proc.poll() is not None:
            return "already stopped"
        worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while worker.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()
            return "SIGKILL after the SIGTERM grace period"
        return "SIGTERM: it drained and exited"

    def cleanup(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
            w.log_file.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    body = "\n".join(f"    {line}" for line in text) if text else "    (empty)"
    return f"  last lines of {path}:\n{body}"


def _prepare_files(db: Path) -> Path:
    """Create the directory, remove an old demo database and journal; return the journal path."""
    if db.is_dir():
        raise CliError(f"--db-path {db} is a directory; give a file path")
    if not db.parent.exists():
        db.parent.mkdir(parents=True)
        if db.parent.name == ".stent":  # ours: keep it out of version control
            (db.parent / ".gitignore").write_text("# created by stent demo\n*\n")
    if db.exists() and db.stat().st_size > 0:
        with db.open("rb") as f:
            if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                raise CliError(f"refusing to replace {db}: it is not a SQLite database")
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            (db.parent / (db.name + suffix)).unlink()
    journal = db.parent / f"{db.stem}.steps.jsonl"
    with contextlib.suppress(FileNotFoundError):
        journal.unlink()
    return journal


def _short(step_name: str) -> str:
    return step_name.removeprefix("demo.")


async def _wait_until(demo: _Demo, done: Callable[[], bool], watch: _Worker, within: float,
                      what: str) -> None:
    """Print journal lines until ``done()``; fail if ``watch`` dies or ``within`` passes."""
    deadline = time.monotonic() + within
    while True:
        demo.show_new_journal_lines()
        if done():
            return
        demo.check_alive(watch)
        if time.monotonic() > deadline:
            raise DemoFailed(f"{what} did not happen within {within:.0f} s\n"
                             f"{_tail(watch.log_path)}")
        await asyncio.sleep(POLL)


async def run_demo(db_path: Path, make_backend: Callable[[str], Backend]) -> int:
    """Run the demo on the SQLite file ``db_path``; print as it goes. Returns the exit status."""
    from stent import Stent

    from . import demo_workflow as wf

    db = db_path.expanduser().absolute()
    journal_path = _prepare_files(db)
    demo = _Demo(db, JournalReader(journal_path), wf.WORKFLOW)
    print("stent demo: an order workflow that survives a killed worker\n")
    print(f"  database  {db}")
    print(f"  workflow  demo.{wf.WORKFLOW}: {' -> '.join(wf.STEPS)}")
    _wrap(f"each step is its own durable function; its body takes ~{wf.STEP_SECONDS:g} s "
          f"and logs its start and end, with its pid, to {journal_path}", indent=" " * 12)
    print()

    backend = make_backend(str(db))
    executor: Stent | None = None
    try:
        await backend.init_db()
        executor = Stent(backend, poll_min_interval=0.05, poll_max_interval=0.2)
        eid = await executor.dispatch(wf.place_order, ORDER_ID, str(journal_path))
        demo.say(f"dispatched demo.{wf.WORKFLOW}({ORDER_ID!r}) as execution {eid}")

        w1 = demo.start_worker()
        demo.say(f"started {w1.label}, pid {w1.pid} (lease {LEASE_SECONDS:g} s, "
                 f"heartbeat every {LEASE_SECONDS / 4:g} s)")
        await _wait_until(demo, lambda: demo.journal.count(KILL_DURING, "start", w1.pid) > 0,
                          w1, REACH_KILL_POINT_WITHIN, f"{w1.label} starting {KILL_DURING}")
        demo.kill(w1)
        demo.say(f"SIGKILL -> {w1.label} (pid {w1.pid}) in the middle of {KILL_DURING}")
        demo.show_new_journal_lines()

        at_kill = {_short(t.step_name): t.state
                   for t in await backend.list_tasks_for_execution(eid) if t.parent_id is not None}
        stored = ", ".join(f"{step} {at_kill[step]}" for step in wf.STEPS if step in at_kill)
        demo.say(f"stored when {w1.label} died: {stored or 'no steps'}")

        w2 = demo.start_worker()
        demo.say(f"started {w2.label}, pid {w2.pid}; it takes over the dead worker's tasks "
                 f"when their leases expire (within {LEASE_SECONDS:g} s)")
        waiting = asyncio.ensure_future(executor.wait_for(eid, expiry=FINISH_WITHIN))
        try:
            await _wait_until(demo, waiting.done, w2, FINISH_WITHIN + 5, "the workflow finishing")
        finally:
            if not waiting.done():
                waiting.cancel()
        try:
            result = waiting.result()
        except TimeoutError as exc:
            raise DemoFailed(f"the workflow did not finish: {exc}\n{_tail(w2.log_path)}") from exc
        except Exception as exc:
            raise DemoFailed(f"waiting for the workflow failed: {exc!r}") from exc
        if not result.ok:
            raise DemoFailed(f"the workflow failed: {result.error!r}\n{_tail(w2.log_path)}")
        demo.say(f"execution completed, result: {result.value}")
        how = await demo.stop(w2)
        demo.say(f"stopped {w2.label} ({how})")
        demo.show_new_journal_lines()

        tasks = await backend.list_tasks_for_execution(eid)
        return _report(demo, wf.WORKFLOW, wf.STEPS, w1, w2, at_kill, tasks)
    except DemoFailed as exc:
        print(f"\nstent demo failed: {exc}", file=sys.stderr)
        print(f"database: {db}", file=sys.stderr)
        return 1
    finally:
        demo.cleanup()
        if executor is not None:
            with contextlib.suppress(Exception):
                await executor.shutdown()
        await backend.close()


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _report(demo: _Demo, workflow: str, steps: Sequence[str], w1: _Worker, w2: _Worker,
            at_kill: dict[str, str], tasks: Sequence[TaskRecord]) -> int:
    """Print the table and the verdict, both computed from the journal and the database."""
    journal = demo.journal
    by_step: dict[str, list[TaskRecord]] = {}
    for t in tasks:
        by_step.setdefault(_short(t.step_name), []).append(t)

    def ran_in(step: str) -> str:
        parts = []
        for w in (w1, w2):
            starts = journal.count(step, "start", w.pid)
            if not starts:
                continue
            note = ""
            if step == workflow and w is w2 and journal.count(step, "start", w1.pid):
                note = " (replay)"
            elif w.killed and journal.count(step, "end", w.pid) < starts:
                note = " (killed)"
            parts.append(f"{w.label}{note}" + (f" x{starts}" if starts > 1 else ""))
        return ", ".join(parts) or "-"

    rows: list[list[str]] = [["function", "ran in", "started", "finished", "stored",
                              "recoveries"]]
    for step in (workflow, *steps):
        records = by_step.get(step, [])
        rows.append([
            step if step == workflow else f"  {step}",
            ran_in(step),
            str(journal.count(step, "start")),
            str(journal.count(step, "end")),
            "/".join(t.state for t in records) or "not stored",
            "/".join(str(t.crash_count) for t in records) or "-",
        ])
    print()
    for line in _table(rows):
        print(line)
    _wrap("started/finished: times the body started and finished, from the journal. "
          "stored/recoveries: the task as the database holds it; a recovery is a take-over "
          "of a task whose worker died.")
    print()
    print(f"{w1.label} = pid {w1.pid} (killed with SIGKILL)    {w2.label} = pid {w2.pid}")

    # The verdict, from the data: a step the database held as completed when worker #1 died
    # must not have started again afterwards.
    done_before = [s for s in steps if at_kill.get(s) == "completed"]
    rerun = [s for s in done_before if journal.count(s, "start") > 1]
    unfinished = [s for s in steps
                  if [t.state for t in by_step.get(s, [])] != ["completed"]
                  or not journal.count(s, "end")]
    interrupted = [s for s in steps if s not in done_before and journal.count(s, "start", w1.pid)]
    print(f"completed steps re-run after the crash: {', '.join(rerun) if rerun else 'none'}")
    for s in rerun:
        _wrap(f"{s} was stored as completed when {w1.label} died, yet its body started "
              f"{journal.count(s, 'start')} times.", indent="  ")
    once = [s for s in done_before if s not in rerun]
    if once:
        _wrap(f"{_join(once)} completed before the kill and ran once, in {w1.label}.",
              indent="  ")
    for s in interrupted:
        _wrap(f"{s} was interrupted by the kill before it completed, so {w2.label} ran it "
              f"again (steps run at least once: keep their side effects idempotent).",
              indent="  ")
    _wrap(f"{workflow} started again in {w2.label} and replayed: its completed steps "
          f"returned their stored results instead of running.", indent="  ")
    if unfinished:
        _wrap(f"NOT completed: {_join(unfinished)}", indent="  ")
    print()
    print(f"database: {demo.db}")
    print(f"step journal: {demo.journal.path}")
    print(f"total time: {time.time() - demo.t0:.1f} s")
    return 0 if not rerun and not unfinished and w1.pid != w2.pid else 1


def _wrap(text: str, indent: str = "", width: int = 92) -> None:
    print(textwrap.fill(text, width=width, initial_indent=indent,
                        subsequent_indent=indent + "  "))


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]

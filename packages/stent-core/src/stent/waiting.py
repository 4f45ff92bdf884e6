"""The in-process hub of completion futures.

Waiters (a parent awaiting a step, ``wait_for`` awaiting an execution's root task) sit on
futures keyed by task id. Three feeds resolve them: local completions (immediately), the
notification backend (other processes), and a backoff poll that asks the database about every
outstanding id in one query. A lost notification therefore costs latency, never correctness.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .clock import poll_sleep
from .records import TaskOutcome

if TYPE_CHECKING:
    from .app import Stent

log = logging.getLogger("stent.waiting")

#: how many recently finished outcomes a hub remembers
_RECENT_LIMIT = 10_000

#: outages: at most one WARNING per this many seconds, retries at most this far apart
_WARN_EVERY_S = 30.0
_MAX_RETRY_S = 5.0


class CompletionHub:
    """Futures for task completions, fed locally, by notifications and by polling."""

    def __init__(self, executor: Stent) -> None:
        self._executor = executor
        self._waiters: dict[str, list[asyncio.Future[TaskOutcome]]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        #: outcomes of tasks finished here lately, oldest first (bounded)
        self._recent: dict[str, TaskOutcome] = {}
        # outage logging: when the last WARNING was written, and whether polls are failing
        self._last_warning: float | None = None
        self._failing = False

    def watch(self, task_id: str) -> asyncio.Future[TaskOutcome]:
        """A future resolved with ``task_id``'s outcome once it finishes."""
        fut: asyncio.Future[TaskOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(fut)
        self._ensure_poller()
        return fut

    def unwatch(self, task_id: str, fut: asyncio.Future[TaskOutcome]) -> None:
        """Forget a future whose waiter went away."""
        futs = self._waiters.get(task_id)
        if futs is None:
            return
        try:
            futs.remove(fut)
        except ValueError:
            pass
        if not futs:
            del self._waiters[task_id]

    async def wait(self, task_id: str) -> TaskOutcome:
        """Wait for ``task_id``'s outcome."""
        recent = self._recent.get(task_id)
        if recent is not None:  # it finished here before the wait began
            return recent
        fut = self.watch(task_id)
        try:
            return await fut
        finally:
            self.unwatch(task_id, fut)

    def recent(self, task_id: str) -> TaskOutcome | None:
        """The outcome of ``task_id`` if it finished in this process recently (a finished
        task's outcome never changes, so ``wait_for`` may answer from it without a read)."""
        return self._recent.get(task_id)

    def resolve(self, outcome: TaskOutcome) -> None:
        """Hand ``outcome`` to everyone waiting for its task."""
        if outcome.state in ("completed", "failed"):
            self._recent[outcome.task_id] = outcome
            if len(self._recent) > _RECENT_LIMIT:
                del self._recent[next(iter(self._recent))]
        for fut in self._waiters.pop(outcome.task_id, ()):
            if not fut.done():
                fut.set_result(outcome)

    def notify_done(self, ids: Sequence[str]) -> None:
        """Another process says these tasks finished: fetch their outcomes soon. No ids
        means "ids unknown" (a notification connection came back after messages may have
        been lost): look at every outstanding one."""
        if not ids or any(i in self._waiters for i in ids):
            self._kick.set()

    def outstanding(self) -> list[str]:
        """Ids somebody waits for."""
        return list(self._waiters)

    # -- polling ------------------------------------------------------------------------------
    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            # a clean context: the poller serves every waiter, not the task that started it
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_loop(), name="stent-completion-poll", context=contextvars.Context()
            )

    async def _poll_loop(self) -> None:
        ex = self._executor
        interval = ex.poll_min_interval
        while self._waiters:
            kicked = await _sleep_or_event(ex, interval, self._kick)
            self._kick.clear()
            ids = list(self._waiters)
            if not ids:
                break
            try:
                outcomes = await ex.backend.get_outcomes(ids)
            except Exception as exc:  # the poll is the safety net: it must survive outages
                # one WARNING per 30 s, however often it fails; retries at most 5 s apart
                now = time.monotonic()
                if self._last_warning is None or now - self._last_warning >= _WARN_EVERY_S:
                    self._last_warning = now
                    log.warning("completion poll failed, will retry: %s", exc)
                else:
                    log.debug("completion poll failed, will retry: %s", exc)
                self._failing = True
                interval = min(ex.poll_max_interval, _MAX_RETRY_S,
                               max(interval, 1.0) * ex.poll_backoff_factor)
                continue
            if self._failing:
                self._failing = False
                log.info("completion poll works again")
            for outcome in outcomes:
                self.resolve(outcome)
            if outcomes or kicked:
                interval = ex.poll_min_interval
            else:
                interval = min(ex.poll_max_interval, interval * ex.poll_backoff_factor)

    async def close(self) -> None:
        """Stop polling."""
        if self._poller is not None and not self._poller.done():
            self._poller.cancel()
            try:
                await self._poller
            except (asyncio.CancelledError, Exception):
                pass
        self._poller = None


async def _sleep_or_event(
    executor: Stent, seconds: float, event: asyncio.Event, *, poll: bool = True
) -> bool:
    """Sleep on the executor's clock until ``seconds`` pass or ``event`` is set.

    Returns:
        True if the event woke us.
    """
    if event.is_set():
        return True
    sleeper = asyncio.ensure_future(
        poll_sleep(executor.clock, seconds) if poll else executor.clock.sleep(seconds)
    )
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waiter.cancel()
    return event.is_set()


sleep_or_event = _sleep_or_event

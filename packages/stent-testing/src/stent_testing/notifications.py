"""``LocalNotifications``: cross-executor wake-ups inside one process, for tests.

In production, executors in different processes wake each other through Redis or Postgres
LISTEN/NOTIFY. A test that runs several ``Stent`` instances in one process (a client and its
workers, or a worker and the fresh one that replaces it after an injected crash) gets the same
wake-ups from this in-process bus, so nothing waits for a poll.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Sequence

from stent.backend import NotificationHandler

log = logging.getLogger("stent.testing.notifications")

__all__ = ["LocalNotifications"]


class LocalNotifications:
    """An in-process publish/subscribe bus; :meth:`endpoint` gives each executor its own
    ``NotificationBackend``.

    A message published by one endpoint is delivered to every other started endpoint (an
    executor already wakes its own waiters locally). Delivery is asynchronous, like a real
    notification service, and a handler that raises is logged and ignored.
    """

    def __init__(self) -> None:
        self._endpoints: list[_Endpoint] = []

    def endpoint(self) -> _Endpoint:
        """A new notification backend attached to this bus (pass it as
        ``Stent(..., notification_backend=...)``)."""
        return _Endpoint(self)

    def _deliver(self, sender: _Endpoint, channel: str, ids: Sequence[str]) -> None:
        for target in list(self._endpoints):
            if target is not sender:
                target.receive(channel, list(ids))


class _Endpoint:
    """One executor's connection to a :class:`LocalNotifications` bus."""

    def __init__(self, bus: LocalNotifications) -> None:
        self._bus = bus
        self._handler: NotificationHandler | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self, handler: NotificationHandler) -> None:
        """Begin delivering ``(channel, ids)`` messages to ``handler``."""
        self._handler = handler
        if self not in self._bus._endpoints:
            self._bus._endpoints.append(self)

    async def publish(self, channel: str, ids: Sequence[str]) -> None:
        """Announce ``ids`` on ``channel`` to the other endpoints."""
        self._bus._deliver(self, channel, ids)

    def receive(self, channel: str, ids: list[str]) -> None:
        """Hand a message to this endpoint's handler (soon, not inline)."""
        if self._handler is None:
            return
        task = asyncio.get_running_loop().create_task(self._call(self._handler, channel, ids))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @staticmethod
    async def _call(handler: NotificationHandler, channel: str, ids: list[str]) -> None:
        try:
            outcome = handler(channel, ids)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception as exc:  # like a lost message: polling still finds the work
            log.debug("notification handler failed: %s", exc)

    async def close(self) -> None:
        """Stop delivering."""
        self._handler = None
        if self in self._bus._endpoints:
            self._bus._endpoints.remove(self)
        for task in list(self._pending):
            task.cancel()

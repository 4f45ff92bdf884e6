"""``serve(health_port=...)``: a tiny HTTP endpoint for liveness, readiness and metrics.

``GET /health`` answers 200 while the worker's process runs; ``GET /ready`` answers 200 only
while this worker claims work (503 before it is ready and while it drains); ``GET /metrics``
serves the Prometheus text of a ``PrometheusMetrics`` recorder (404 without one). It is plain
asyncio: no web framework is needed for three fixed answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("stent.health")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_MAX_REQUEST_BYTES = 8192


class HealthServer:
    """Serves ``/health``, ``/ready`` and ``/metrics`` for one worker.

    Args:
        ready: whether the worker claims work right now.
        metrics_text: the Prometheus exposition, or None when no recorder can render one.
        host: the address to bind (``0.0.0.0`` for probes from outside the pod).
        port: the port (0 picks a free one; see :attr:`port` once started).
    """

    def __init__(
        self, ready: Callable[[], bool], metrics_text: Callable[[], bytes | None], *,
        host: str = "0.0.0.0", port: int = 8080,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"invalid health_port {port!r}: expected an int 0-65535")
        self._ready = ready
        self._metrics_text = metrics_text
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen (raises ``OSError`` if the port is taken)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sockets = self._server.sockets or ()
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("health endpoint on http://%s:%d (/health, /ready, /metrics)",
                 self.host, self.port)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if len(head) > _MAX_REQUEST_BYTES:
                raise ValueError("request too large")
            method, path = _request_line(head)
            status, body, ctype = self._answer(method, path)
        except Exception:  # a malformed or slow request: answer nothing, close
            writer.close()
            return
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()

    def _answer(self, method: str, path: str) -> tuple[int, bytes, str]:
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed\n", "text/plain"
        path = path.split("?", 1)[0]
        if path == "/health":
            return 200, b"OK\n", "text/plain"
        if path == "/ready":
            return (200, b"Ready\n", "text/plain") if self._ready() else (
                503, b"Not Ready\n", "text/plain")
        if path == "/metrics":
            text = self._metrics_text()
            if text is None:
                return 404, b"no Prometheus metrics configured\n", "text/plain"
            return 200, text, "text/plain; version=0.0.4; charset=utf-8"
        return 404, b"not found\n", "text/plain"


def _request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3:
        raise ValueError(f"bad request line {line!r}")
    return parts[0], parts[1]


def metrics_text_of(recorder: Any) -> Callable[[], bytes | None]:
    """A callable rendering ``recorder`` as Prometheus text, if it can."""

    def render() -> bytes | None:
        fn = getattr(recorder, "render", None)
        if fn is None:
            return None
        out = fn()
        return out if isinstance(out, bytes) else str(out).encode()

    return render

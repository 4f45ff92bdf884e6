"""The deployment guide's aiohttp health-check example ("Health Check Endpoint"), run as
printed (only its port changed) against a real executor and worker."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from stent import Result, Stent
from stent.backend import Backend

from ..engine.helpers import start_worker, stop_worker
from . import traced_workflows as wf

GUIDE = Path(__file__).resolve().parents[3] / "shared" / "deployment-guide.md"
GUIDE_PORT = "8080"


def guide_health_example() -> str:
    """The Python block under the guide's "Health Check Endpoint" heading."""
    text = GUIDE.read_text()
    section = text.index("### Health Check Endpoint")
    start = text.index("```python\n", section) + len("```python\n")
    end = text.index("```", start)
    return text[start:end]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


@pytest.mark.parametrize("stent_backend_kind", ["memory", "sqlite"])
async def test_the_guides_aiohttp_health_server_reports_liveness_and_readiness(
    stent_backend: Backend,
) -> None:
    code = guide_health_example()
    assert code.count(GUIDE_PORT) == 1  # the one thing changed
    port = free_port()
    namespace: dict[str, Any] = {"__name__": "guide_health_example"}
    exec(compile(code.replace(GUIDE_PORT, str(port)), "deployment-guide.md", "exec"), namespace)

    executor = Stent(stent_backend)
    health_runner = await namespace["create_health_server"](executor)
    try:
        assert await get(port, "/health") == (200, "OK")
        assert await get(port, "/ready") == (503, "Not Ready")  # no worker yet

        lifecycle = executor.create_worker_lifecycle(name="guide-worker")
        worker = await start_worker(executor, lifecycle=lifecycle, poll_interval=0.05)
        assert await get(port, "/ready") == (200, "Ready")
        eid = await executor.dispatch(wf.two_steps, 1)
        assert await asyncio.wait_for(executor.wait_for(eid), 20) == Result.Ok(3)
        assert await get(port, "/ready") == (200, "Ready")

        executor.request_worker_drain(lifecycle)
        await asyncio.wait_for(worker, 10)  # drained and stopped
        assert await get(port, "/ready") == (503, "Not Ready")
        assert await get(port, "/health") == (200, "OK")  # alive all along
        await stop_worker(executor, worker)
    finally:
        await health_runner.cleanup()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(port, "/health")

"""``serve(health_port=...)`` endpoints and the metrics recorders (SPEC §7)."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from stent import MetricsRecorder, Result, Stent
from stent.backend import Backend
from stent.metrics import PrometheusMetrics

from ..engine.helpers import start_worker, stop_worker

GUIDE = Path(__file__).resolve().parents[3] / "shared" / "deployment-guide.md"
release = {"e": asyncio.Event()}


@pytest.fixture(autouse=True)
def _reset() -> None:
    release["e"] = asyncio.Event()


@Stent.durable(name="tests.health.add")
async def add(a: int, b: int) -> int:
    return a + b


@Stent.durable(name="tests.health.flow")
async def flow(x: int) -> int:
    return await add(x, 1)


@Stent.durable(name="tests.health.blocker")
async def blocker() -> str:
    await release["e"].wait()
    return "done"


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


async def test_health_ready_and_metrics_endpoints(stent_backend: Backend) -> None:
    ex = Stent(stent_backend)
    lc = ex.create_worker_lifecycle(name="w-health")
    w = await start_worker(ex, lifecycle=lc, health_port=0, health_host="127.0.0.1",
                           poll_interval=0.05)
    port = ex.health_servers[0].port
    assert await http_get(port, "/health") == (200, "OK\n")
    assert await http_get(port, "/ready") == (200, "Ready\n")
    assert (await http_get(port, "/metrics"))[0] == 404  # no Prometheus recorder
    assert (await http_get(port, "/nope"))[0] == 404
    eid = await ex.dispatch(blocker)
    while not lc.active_tasks:
        await asyncio.sleep(0.01)
    ex.request_worker_drain(lc)  # draining, a task still running: not ready
    await asyncio.sleep(0.05)
    assert await http_get(port, "/ready") == (503, "Not Ready\n")
    assert (await http_get(port, "/health"))[0] == 200
    release["e"].set()
    await asyncio.wait_for(w, 10)
    assert ex.health_servers == []
    with pytest.raises(OSError):
        await http_get(port, "/health")  # closed with the worker
    assert (await ex.result_of(eid)) == Result.Ok("done")


async def test_prometheus_metrics_are_served_at_metrics(stent_backend: Backend) -> None:
    metrics = PrometheusMetrics()
    ex = Stent(stent_backend, metrics=metrics)
    w = await start_worker(ex, health_port=0, health_host="127.0.0.1", poll_interval=0.05,
                           heartbeat_interval=0.05)
    eid = await ex.dispatch(flow, 1)
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok(2)
    await asyncio.sleep(0.2)  # a heartbeat reports the gauges
    status, body = await http_get(ex.health_servers[0].port, "/metrics")
    assert status == 200
    assert re.search(r'stent_tasks_claimed_total\{kind="function",queue="",'
                     r'step_name="tests.health.flow"\} 1\.0', body)
    assert 'stent_tasks_completed_total{kind="function",queue="",step_name="tests.health.add"}' in body
    assert "stent_task_duration_seconds_bucket" in body
    assert "stent_worker_ready{" in body and "stent_queue_depth{" in body
    await stop_worker(ex, w)


class Exploding(MetricsRecorder):
    def task_claimed(self, queue: str | None, step_name: str, kind: str) -> None:
        raise RuntimeError("recorder bug")

    def task_completed(self, queue: str | None, step_name: str, kind: str, duration_s: float) -> None:
        raise RuntimeError("recorder bug")

    def lease_renewed(self, task_id: str, success: bool) -> None:
        raise RuntimeError("recorder bug")


async def test_a_recorder_that_raises_never_harms_a_worker(stent_backend: Backend) -> None:
    ex = Stent(stent_backend, metrics=Exploding())
    w = await start_worker(ex, poll_interval=0.05, heartbeat_interval=0.05)
    eid = await ex.dispatch(flow, 41)
    assert await asyncio.wait_for(ex.wait_for(eid), 10) == Result.Ok(42)
    await stop_worker(ex, w)


def _guide_prometheus_example() -> str:
    text = GUIDE.read_text()
    start = text.index("from stent.metrics import MetricsRecorder")
    end = text.index("```", start)
    return textwrap.dedent(text[start:end])


@pytest.mark.parametrize("stent_backend_kind", ["sqlite"])
async def test_the_deployment_guides_prometheus_recorder_works_unchanged(
    stent_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prometheus_client

    served: list[int] = []
    # the example's start_http_server(9090) would bind a fixed port on every address
    monkeypatch.setattr(prometheus_client, "start_http_server", lambda port: served.append(port))
    for collector in list(prometheus_client.REGISTRY._collector_to_names):  # fresh registry
        if any(n.startswith("stent_") for n in prometheus_client.REGISTRY._collector_to_names[collector]):
            prometheus_client.REGISTRY.unregister(collector)
    namespace: dict[str, Any] = {"backend": stent_backend, "Stent": Stent}  # earlier snippets
    exec(compile(_guide_prometheus_example(), "deployment-guide.md", "exec"), namespace)
    executor: Stent = namespace["executor"]
    assert served == [9090]
    w = await start_worker(executor, poll_interval=0.05)
    eid = await executor.dispatch(flow, 1)
    assert await asyncio.wait_for(executor.wait_for(eid), 10) == Result.Ok(2)
    metrics = namespace["metrics"]
    assert metrics.tasks_completed.labels(queue="", step_name="tests.health.add",
                                          kind="function")._value.get() == 1
    await stop_worker(executor, w)

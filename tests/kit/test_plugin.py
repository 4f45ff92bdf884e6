"""The pytest plugin as users get it: installed is enough, strict and auto asyncio modes work,
``--stent-backend`` switches the backend, and teardown never hangs (SPEC §11)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from stent import Result, Stent
from stent.backend import Backend
from stent_testing import FakeClock, InMemoryBackend

from .subprocess_pytest import run_pytest
from .workflows import ORDER_RESULT, order

USES_EVERY_FIXTURE = '''
import pytest
from stent import Result, Stent

@Stent.durable(name="user.double")
async def double(x: int) -> int:
    return 2 * x

@Stent.durable(name="user.nap_then_double")
async def nap_then_double(x: int) -> int:
    await Stent.sleep("30d")
    return await double(x)

{marker}
async def test_workflow_runs_on_the_worker(stent_worker, fake_clock, crash):
    eid = await stent_worker.dispatch(nap_then_double, 21)
    assert await stent_worker.wait_for(eid) == Result.Ok(42)
    assert crash.body_runs["user.double"] == 1

{marker}
async def test_crash_and_automatic_restart(stent_worker, crash):
    crash.at("before_step", step=double)
    eid = await stent_worker.dispatch(nap_then_double, 1)
    assert await stent_worker.wait_for(eid) == Result.Ok(2)
    assert [p for p, _ in crash.crashes] == ["before_step"]

{marker}
async def test_mode_two_call_through_the_default_executor(stent_worker):
    assert await double(4) == 8

{marker}
async def test_backend_and_executor(stent_backend, stent_executor):
    assert stent_executor.backend is stent_backend
    assert Stent.current() is stent_executor
'''


def test_fixtures_work_in_strict_mode(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, USES_EVERY_FIXTURE.format(marker="@pytest.mark.asyncio"),
                     "-p", "pytest_asyncio", "-o", "asyncio_mode=strict")
    assert run.returncode == 0, run.output
    assert run.count("passed") == 4


def test_fixtures_work_in_auto_mode(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, USES_EVERY_FIXTURE.format(marker=""),
                     "-o", "asyncio_mode=auto")
    assert run.returncode == 0, run.output
    assert run.count("passed") == 4


BACKEND_KIND = '''
async def test_kind(stent_backend_kind, stent_backend):
    assert stent_backend_kind == "{kind}"
    assert type(stent_backend).__name__ == "{cls}"
'''


@pytest.mark.parametrize(("option", "kind", "cls"), [
    ((), "memory", "InMemoryBackend"),
    (("--stent-backend=sqlite",), "sqlite", "SQLiteBackend"),
])
def test_stent_backend_option_switches_the_backend(
    tmp_path: Path, option: tuple[str, ...], kind: str, cls: str
) -> None:
    run = run_pytest(tmp_path, BACKEND_KIND.format(kind=kind, cls=cls),
                     "-o", "asyncio_mode=auto", *option)
    assert run.returncode == 0, run.output


LEFT_BLOCKED = '''
import asyncio
import pytest
from stent import Stent

never = asyncio.Event()

@Stent.durable(name="user.blocked_forever")
async def blocked_forever() -> None:
    await never.wait()

@Stent.durable(name="user.month_away")
async def month_away() -> None:
    await Stent.sleep("30d")

@Stent.durable(name="user.waits_on_a_blocked_step")
async def waits_on_a_blocked_step() -> None:
    await blocked_forever()

@pytest.mark.asyncio
async def test_step_blocked_on_an_event(stent_worker):
    await stent_worker.dispatch(blocked_forever)
    await asyncio.sleep(0.05)

@pytest.mark.asyncio
async def test_workflow_waiting_on_a_blocked_step(stent_worker):
    await stent_worker.dispatch(waits_on_a_blocked_step)
    await asyncio.sleep(0.05)

@pytest.mark.asyncio
async def test_thirty_day_sleep_on_a_hand_driven_clock(stent_worker, fake_clock):
    fake_clock.auto_advance = False
    await stent_worker.dispatch(month_away)
    await asyncio.sleep(0.05)

@pytest.mark.asyncio
async def test_blocked_after_a_crash(stent_worker, crash):
    crash.at("after_step_recorded", step="user.month_away")
    crash.auto_restart = False
    await stent_worker.dispatch(blocked_forever)
    await stent_worker.dispatch(month_away)
    await asyncio.sleep(0.05)
'''


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_teardown_never_hangs_on_workflows_left_blocked(tmp_path: Path, backend: str) -> None:
    run = run_pytest(tmp_path, LEFT_BLOCKED, "-p", "pytest_asyncio",
                     "-o", "asyncio_mode=strict", f"--stent-backend={backend}", timeout=60)
    assert run.returncode == 0, run.output
    assert run.count("passed") == 4
    assert run.seconds < 20, f"teardown took {run.seconds:.1f}s"


async def test_stent_executor_is_the_default_executor_with_the_fake_clock(
    stent_executor: Stent, fake_clock: FakeClock
) -> None:
    assert Stent.current() is stent_executor
    assert stent_executor.clock is fake_clock


async def test_fake_clock_auto_advances_by_default(fake_clock: FakeClock) -> None:
    assert fake_clock.auto_advance
    await asyncio.wait_for(fake_clock.sleep(30 * 86400), 5)


async def test_worker_is_ready_before_the_test_starts(stent_worker: Stent) -> None:
    assert stent_worker.worker_status_overview()["ready"]


class TestBackendKindOverride:
    """A module (or class) may pin the backend by overriding ``stent_backend_kind``."""

    @pytest.fixture
    def stent_backend_kind(self) -> str:
        return "memory"

    async def test_override_picks_the_backend(self, stent_backend: Backend) -> None:
        assert isinstance(stent_backend, InMemoryBackend)


class TestWorkerOptions:
    """``stent_worker_options`` passes ``serve`` options to the fixture's worker."""

    @pytest.fixture
    def stent_worker_options(self) -> dict[str, Any]:
        return {"max_concurrency": 3}

    async def test_options_reach_the_worker(self, stent_worker: Stent) -> None:
        assert stent_worker._workers[0].max_concurrency == 3
        eid = await stent_worker.dispatch(order, "o-1")
        assert await asyncio.wait_for(stent_worker.wait_for(eid), 10) == Result.Ok(
            ORDER_RESULT)

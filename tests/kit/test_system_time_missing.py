"""Without time-machine the fake clock still works; only moving the system time is refused,
with a message naming the package."""

from __future__ import annotations

import sys

import pytest
from stent_testing import FakeClock, system_time_available


@pytest.fixture
def no_time_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "time_machine", None)  # makes the import fail


@pytest.mark.usefixtures("no_time_machine")
def test_system_time_is_reported_unavailable() -> None:
    assert not system_time_available()


@pytest.mark.usefixtures("no_time_machine")
def test_asking_for_system_time_names_the_missing_package() -> None:
    with pytest.raises(ImportError, match="pip install time-machine"):
        FakeClock(system_time=True)


@pytest.mark.usefixtures("no_time_machine")
async def test_the_clock_still_advances() -> None:
    clock = FakeClock()
    await clock.advance(5)
    assert clock.monotonic() == 5.0

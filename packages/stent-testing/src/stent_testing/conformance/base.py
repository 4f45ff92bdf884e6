"""What every group of conformance tests shares: time comparison and known-gap marking."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import ClassVar

import pytest

#: A POSIX TZ string for UTC+05:45 (no DST, no tz database needed): far from UTC and not a
#: whole hour, so a backend that reads naive times as UTC, or drops the minutes, shows it.
FAR_LOCAL_ZONE = "STENT-05:45"


class ConformanceBase:
    """Shared settings of the conformance test groups (see ``BackendConformance``)."""

    #: How far a stored time may come back from the one passed in. Backends that keep UTC
    #: epoch seconds as a float may round the last microsecond; nothing coarser is allowed.
    time_tolerance: ClassVar[timedelta] = timedelta(microseconds=1)

    #: Test names (without parameters) a backend knowingly fails, with the reason. They are
    #: marked strict ``xfail``: a fixed gap then fails the run until it is removed here.
    expected_failures: ClassVar[Mapping[str, str]] = {}

    @pytest.fixture(autouse=True)
    def _mark_expected_failures(self, request: pytest.FixtureRequest) -> None:
        name = getattr(request.node, "originalname", None) or request.node.name
        reason = self.expected_failures.get(name)
        if reason is not None:
            request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))

    @pytest.fixture
    def local_zone(self) -> Iterator[timedelta]:
        """Run the test with the process's local time zone at UTC+05:45, where possible.

        Naive datetimes are read as local time (``datetime.astimezone``); testing that in a
        UTC container would prove nothing. Without ``time.tzset`` (Windows) the zone is left
        as it is. Yields the local UTC offset in force.
        """
        tzset = getattr(time, "tzset", None)
        if tzset is None:
            yield datetime.now().astimezone().utcoffset() or timedelta(0)
            return
        previous = os.environ.get("TZ")
        os.environ["TZ"] = FAR_LOCAL_ZONE
        tzset()
        try:
            yield datetime.now().astimezone().utcoffset() or timedelta(0)
        finally:
            if previous is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = previous
            tzset()

    def assert_time(self, got: datetime | None, expected: datetime) -> None:
        """Assert that ``got`` is an aware UTC datetime equal to ``expected``.

        Equal means within :attr:`time_tolerance`; UTC means a zero UTC offset.
        """
        assert got is not None, f"expected {expected.isoformat()}, got None"
        assert got.tzinfo is not None, f"{got!r} is naive; backends return aware UTC times"
        assert got.utcoffset() == timedelta(0), f"{got.isoformat()} is not in UTC"
        assert abs(got - expected) <= self.time_tolerance, (
            f"stored time {got.isoformat()} differs from {expected.isoformat()}"
        )


def naive_local(moment: datetime) -> datetime:
    """The naive local wall-clock time of an aware ``moment`` (what ``datetime.now()`` gives)."""
    return moment.astimezone().replace(tzinfo=None)

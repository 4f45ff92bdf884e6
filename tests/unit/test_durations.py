"""Tests for stent.durations."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from stent.durations import duration_seconds, parse_duration, parse_optional_duration

VALID: list[tuple[Any, float]] = [
    ("1h30m", 5400),
    ("250ms", 0.25),
    ("1.5s", 1.5),
    (".5s", 0.5),
    ("2d", 172_800),
    ("1w2d", 777_600),
    ("1w", 604_800),
    ("1h 30m", 5400),
    ("  5s  ", 5),
    ("30m1h", 5400),
    ("1h30m15s250ms", 5415.25),
    ("1m1ms", 60.001),
    ("0s", 0),
    ("0ms", 0),
    (0, 0),
    (0.0, 0),
    (5, 5),
    (1.5, 1.5),
    (10**6, 1e6),
    (timedelta(minutes=2), 120),
    (timedelta(0), 0),
    ({"minutes": 5}, 300),
    ({"hours": 1, "minutes": 30}, 5400),
    ({"milliseconds": 250}, 0.25),
    ({"weeks": 1, "days": 0.5}, 648_000),
]


@pytest.mark.parametrize(("value", "seconds"), VALID, ids=repr)
def test_valid_duration_parses_to_expected_seconds(value: Any, seconds: float) -> None:
    assert parse_duration(value) == timedelta(seconds=seconds)
    assert duration_seconds(value) == pytest.approx(seconds)


INVALID: list[Any] = [
    "5x",
    "",
    "   ",
    "-5s",
    "5",
    "s",
    "1h1h",
    "1s 1s",
    "1.2.3s",
    "1 h",
    "1h,30m",
    "5S",
    "1e3s",
    "nan",
    "infs",
    "1h-30m",
    "99999999999w",
    float("nan"),
    float("inf"),
    float("-inf"),
    -1,
    -0.5,
    10**20,
    timedelta(seconds=-1),
    {"fortnights": 1},
    {},
    {"minutes": -5},
    {"minutes": float("nan")},
    {"minutes": "5"},
    {1: 5},
]


@pytest.mark.parametrize("value", INVALID, ids=repr)
def test_invalid_duration_raises_value_error_quoting_the_input(value: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert repr(value) in str(info.value)


def test_invalid_string_message_explains_the_expected_format() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("5x")
    assert str(info.value) == (
        "invalid duration '5x': expected parts like '1h30m' or '250ms' (units: ms, s, m, h, d, w)"
    )


def test_duplicate_unit_message_names_the_unit() -> None:
    with pytest.raises(ValueError, match="unit 'h' appears more than once"):
        parse_duration("1h1h")


@pytest.mark.parametrize("value", [True, False, None, [1], b"5s", object(), 1j])
def test_wrong_type_raises_type_error_naming_the_type(value: Any) -> None:
    with pytest.raises(TypeError) as info:
        parse_duration(value)
    assert type(value).__name__ in str(info.value)


def test_fractional_string_is_exact_to_the_microsecond() -> None:
    assert parse_duration("0.1s") == timedelta(microseconds=100_000)
    assert parse_duration("1.000001s") == timedelta(seconds=1, microseconds=1)


def test_parse_duration_returns_timedelta_unchanged() -> None:
    value = timedelta(hours=3)
    assert parse_duration(value) is value


def test_duration_seconds_returns_a_float() -> None:
    result = duration_seconds("2m")
    assert isinstance(result, float)
    assert result == 120.0


def test_parse_optional_duration_passes_none_through() -> None:
    assert parse_optional_duration(None) is None


def test_parse_optional_duration_parses_other_values() -> None:
    assert parse_optional_duration("1m") == timedelta(minutes=1)


def test_parse_optional_duration_still_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="'-1s'"):
        parse_optional_duration("-1s")

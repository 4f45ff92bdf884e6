"""Parsing of human-friendly durations (``"1h30m"``, ``250``, ``{"minutes": 5}``).

Every place that takes a timeout, a delay or a retention period accepts the same
forms, so the rules live here once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import TypeAlias

__all__ = [
    "DurationLike",
    "duration_seconds",
    "parse_duration",
    "parse_optional_duration",
]

DurationLike: TypeAlias = timedelta | int | float | str | Mapping[str, int | float]
"""What :func:`parse_duration` accepts (it takes ``object`` and checks at runtime, so
callers can pass user input straight through)."""

_STRING_HELP = "expected parts like '1h30m' or '250ms' (units: ms, s, m, h, d, w)"

# Microseconds per unit. Strings are converted with Decimal arithmetic so that
# "0.1s" is exactly 100000 microseconds rather than whatever a float rounds to.
_UNIT_MICROSECONDS: dict[str, int] = {
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 604_800_000_000,
}

# "ms" must be tried before "m", otherwise "250ms" would read as 250 minutes then "s".
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d|w)")
_SPACE = re.compile(r"\s*")

_TIMEDELTA_KEYS = frozenset(
    {"weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds"}
)


def parse_duration(value: object) -> timedelta:
    """Turn any accepted duration form into a non-negative :class:`~datetime.timedelta`.

    Accepted forms:

    * a ``timedelta``;
    * an ``int`` or ``float`` number of seconds (``bool`` is refused);
    * a mapping of ``timedelta`` keyword arguments, e.g. ``{"minutes": 5}``;
    * a string of one or more ``<number><unit>`` parts with units ``ms s m h d w``,
      e.g. ``"1h30m"``, ``"250ms"``, ``"1.5s"``, ``"1w 2d"``. Each unit may appear
      once; whitespace may separate parts.

    Zero is allowed. Fractions below a microsecond are rounded to the nearest
    microsecond.

    Args:
        value: the duration to parse.

    Returns:
        The duration as a ``timedelta``.

    Raises:
        ValueError: the value is negative, NaN, infinite, empty, malformed or too
            large for a ``timedelta``; the message quotes the input.
        TypeError: the value is of an unsupported type (the message names it).
    """
    return _parse(value)


def duration_seconds(value: object) -> float:
    """Like :func:`parse_duration`, but return the duration in seconds.

    Args:
        value: the duration to parse.

    Returns:
        The number of seconds, as a float.

    Raises:
        ValueError: see :func:`parse_duration`.
        TypeError: see :func:`parse_duration`.
    """
    return _parse(value).total_seconds()


def parse_optional_duration(value: object) -> timedelta | None:
    """Like :func:`parse_duration`, but let ``None`` (meaning "no limit") through.

    Args:
        value: the duration to parse, or None.

    Returns:
        The duration, or None when ``value`` is None.

    Raises:
        ValueError: see :func:`parse_duration`.
        TypeError: see :func:`parse_duration`.
    """
    if value is None:
        return None
    return _parse(value)


def _parse(value: object) -> timedelta:
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"invalid duration {value!r}: durations cannot be negative")
        return value
    if isinstance(value, bool):
        # bool is an int subclass; ``timeout=True`` is almost certainly a mistake.
        raise TypeError(f"invalid duration {value!r}: expected a number of seconds, not a bool")
    if isinstance(value, int | float):
        return _from_seconds(value)
    if isinstance(value, str):
        return _from_string(value)
    if isinstance(value, Mapping):
        return _from_mapping(value)
    raise TypeError(
        f"invalid duration of type {type(value).__name__!r}: expected a timedelta, a number "
        "of seconds, a string like '1h30m' or a dict like {'minutes': 5}"
    )


def _from_seconds(value: int | float) -> timedelta:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"invalid duration {value!r}: must be a finite number of seconds")
    if value < 0:
        raise ValueError(f"invalid duration {value!r}: durations cannot be negative")
    try:
        return timedelta(seconds=value)
    except OverflowError:
        raise ValueError(f"invalid duration {value!r}: too large") from None


def _from_string(text: str) -> timedelta:
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"invalid duration {text!r}: empty string; {_STRING_HELP}")
    if stripped.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: durations cannot be negative")
    total = Decimal(0)
    seen: set[str] = set()
    pos = 0
    while pos < len(stripped):
        match = _PART.match(stripped, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}: {_STRING_HELP}")
        number, unit = match.groups()
        if unit in seen:
            raise ValueError(
                f"invalid duration {text!r}: unit {unit!r} appears more than once; {_STRING_HELP}"
            )
        seen.add(unit)
        try:
            total += Decimal(number) * _UNIT_MICROSECONDS[unit]
        except InvalidOperation:  # pragma: no cover - the regex only lets digits through
            raise ValueError(f"invalid duration {text!r}: {_STRING_HELP}") from None
        space = _SPACE.match(stripped, match.end())
        assert space is not None  # r"\s*" always matches
        pos = space.end()
    try:
        return timedelta(microseconds=int(total.to_integral_value()))
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too large") from None


def _from_mapping(value: Mapping[object, object]) -> timedelta:
    if not value:
        raise ValueError(
            f"invalid duration {value!r}: empty dict; expected timedelta keyword arguments "
            "like {'minutes': 5}"
        )
    kwargs: dict[str, float] = {}
    for key, amount in value.items():
        if not isinstance(key, str) or key not in _TIMEDELTA_KEYS:
            raise ValueError(
                f"invalid duration {value!r}: unknown key {key!r} "
                f"(expected: {', '.join(sorted(_TIMEDELTA_KEYS))})"
            )
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise ValueError(
                f"invalid duration {value!r}: {key!r} must be a number, not {type(amount).__name__}"
            )
        if isinstance(amount, float) and not math.isfinite(amount):
            raise ValueError(f"invalid duration {value!r}: {key!r} must be finite")
        if amount < 0:
            # Refusing negative parts (not only a negative total) keeps
            # {"hours": 1, "minutes": -30} from being a confusing way to write 30m.
            raise ValueError(f"invalid duration {value!r}: durations cannot be negative")
        kwargs[key] = amount
    try:
        return timedelta(**kwargs)
    except OverflowError:
        raise ValueError(f"invalid duration {value!r}: too large") from None

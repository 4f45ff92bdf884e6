"""Validation of user-supplied names and routing values, at the earliest point."""

from __future__ import annotations

import re
from collections.abc import Iterable

_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")


def check_name(kind: str, value: object) -> str:
    """A queue, tag or signal name, or ``ValueError`` naming the bad value."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(
            f"invalid {kind} name {value!r}: expected 1-200 characters from "
            "A-Z a-z 0-9 _ . : -"
        )
    return value


def check_queue(value: object) -> str | None:
    """A queue name or None (the default queue)."""
    return None if value is None else check_name("queue", value)


def check_tags(value: object) -> tuple[str, ...]:
    """A list of tag names, as a sorted tuple without duplicates."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"invalid tags {value!r}: expected a list of tag names")
    return tuple(sorted({check_name("tag", t) for t in value}))


def check_priority(value: object) -> int:
    """An int priority."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"invalid priority {value!r}: expected an int")
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"invalid priority {value!r}: out of the 32-bit range")
    return value


def check_positive_int(kind: str, value: object, *, allow_none: bool = True) -> int | None:
    """A positive int (or None when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"invalid {kind} {value!r}: expected an int >= 1")
    return value

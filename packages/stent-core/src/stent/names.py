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


def storable(value: str) -> bool:
    """Whether every backend can store ``value`` as text: no NUL character (PostgreSQL text
    cannot hold one) and valid UTF-8 (no lone surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_key(kind: str, value: object, max_bytes: int) -> str:
    """An id or key a user chooses (``execution_id``, ``idempotency_key``, a task id): a
    non-empty str, storable, at most ``max_bytes`` UTF-8 bytes; else ``ValueError`` naming
    it."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"invalid {kind} {value!r}: expected a non-empty str")
    if not storable(value):
        raise ValueError(f"invalid {kind} {value!r}: NUL characters and lone surrogates "
                         "cannot be stored")
    if len(value.encode("utf-8")) > max_bytes:
        raise ValueError(f"invalid {kind} {value[:40]!r}...: longer than {max_bytes} UTF-8 bytes")
    return value


def is_lookup_id(value: object, max_bytes: int = 200) -> bool:
    """Whether ``value`` could be a stored id at all (a lookup of anything else finds
    nothing, without asking the database)."""
    return (isinstance(value, str) and bool(value) and storable(value)
            and len(value.encode("utf-8")) <= max_bytes)

"""How commands print: aligned tables and ``key: value`` blocks for people, JSON for machines.

Values read from the database (results, arguments, errors) are shown with ``repr`` in
tables, and turned into JSON-safe data by :func:`json_safe`, which never fails: what JSON
cannot hold becomes its ``repr``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from stent.errors import RemoteError
from stent.result import Result

from .dburl import scrub

__all__ = [
    "DEFAULT_QUEUE",
    "describe_error",
    "fmt_duration",
    "fmt_queue",
    "fmt_time",
    "json_safe",
    "print_json",
    "print_pairs",
    "print_table",
    "short_repr",
]

DEFAULT_QUEUE = "@default"
"""How the default queue (``queue=None``) is written on the command line and in tables."""

_MAX_DEPTH = 20


def fmt_time(t: datetime | None) -> str:
    """A timestamp for a table: UTC to the second (``2025-01-31 12:00:05Z``), or ``-``."""
    if t is None:
        return "-"
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_duration(seconds: float | None) -> str:
    """``0.25s``, ``12.0s``, ``3m05s``, ``2h03m``, or ``-``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_queue(queue: str | None) -> str:
    """A queue name, the default queue written as ``@default``."""
    return DEFAULT_QUEUE if queue is None else queue


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters (a table row is no place for a megabyte)."""
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not break the command
        text = f"<{type(value).__name__} (repr failed: {type(exc).__name__})>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(exc: BaseException | None) -> dict[str, Any] | None:
    """A JSON-safe account of a stored error: ``{"type", "message", "repr", "traceback"}``.

    ``type`` is ``module.QualName`` of the rebuilt exception, or the original type's name
    for a :class:`~stent.errors.RemoteError` (whose class could not be imported here).
    """
    if exc is None:
        return None
    if isinstance(exc, RemoteError):
        type_name, message = exc.type_name, exc.message
    else:
        cls = type(exc)
        type_name, message = f"{cls.__module__}.{cls.__qualname__}", str(exc)
    return {
        "type": type_name,
        "message": message,
        "repr": short_repr(exc, 2000),
        "traceback": getattr(exc, "remote_traceback", None) or None,
    }


def json_safe(value: Any, _depth: int = 0) -> Any:
    """``value`` as plain JSON data.

    Containers are converted item by item, dataclasses to dicts of their fields, a
    ``Result`` to ``{"ok", "value", "error"}``, times to ISO 8601, ``Decimal`` and ``UUID``
    to strings, ``bytes`` to ``{"base64": ...}``, enum members to their value; exceptions
    as :func:`describe_error`; anything else (and non-finite floats) to ``repr``.
    """
    if _depth > _MAX_DEPTH:
        return short_repr(value)
    d = _depth + 1
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Result):
        return {"ok": value.ok, "value": json_safe(value.value, d),
                "error": describe_error(value.error)}
    if isinstance(value, BaseException):
        return describe_error(value)
    if isinstance(value, Enum):
        return json_safe(value.value, d)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_safe(getattr(value, f.name), d) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else short_repr(k): json_safe(v, d)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [json_safe(v, d) for v in items]
    return short_repr(value, 2000)


def print_json(data: Any) -> None:
    """Print ``data`` (already JSON-safe) as indented JSON on stdout."""
    sys.stdout.write(scrub(json.dumps(data, indent=2, ensure_ascii=False)) + "\n")


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
                *, empty: str = "(none)") -> None:
    """Print rows under headers, columns aligned; ``empty`` when there are no rows."""
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        sys.stdout.write(empty + "\n")
        return
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    sys.stdout.write(scrub("\n".join(lines)) + "\n")


def print_pairs(pairs: Iterable[tuple[str, object]]) -> None:
    """Print ``key  value`` lines with the values aligned (a multi-line value is indented)."""
    items = [(k, str(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    lines = []
    for key, value in items:
        first, *rest = value.split("\n") or [""]
        lines.append(f"{key.ljust(width)}  {first}".rstrip())
        lines.extend(f"{' ' * width}  {line}".rstrip() for line in rest)
    sys.stdout.write(scrub("\n".join(lines)) + "\n")

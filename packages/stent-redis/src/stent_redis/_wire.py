"""What travels over Redis: channel names and id payloads.

A message is a comma-joined list of ids and nothing else; an empty payload means "look
again" (new work somewhere, or messages may have been lost). Generated ids are hex, but an
``execution_id`` chosen by the user may contain any character, so ``%`` and ``,`` inside an id
are escaped as ``%25`` and ``%2C``: every id round-trips exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

#: the engine's channels: ``work`` (something became claimable), ``done`` (tasks finished)
#: and ``cancel`` (executions being cancelled: their running steps elsewhere stop at once)
CHANNELS = ("work", "done", "cancel")
#: what a (re)subscribed listener asks the engine to look at again, since messages may have
#: been lost meanwhile (a lost ``cancel`` costs latency only: heartbeats find it too)
LOOK_AGAIN = ("work", "done")

_PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")
_ESCAPED = re.compile(r"%(25|2C)")
_UNESCAPE = {"25": "%", "2C": ","}


def check_prefix(prefix: object) -> str:
    """A valid channel prefix, or ``ValueError`` saying what is allowed."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"invalid channel_prefix {prefix!r}: expected 1-100 characters from "
            "A-Z a-z 0-9 _ . : -"
        )
    return prefix


def channel_name(prefix: str, channel: str) -> str:
    """The Redis channel carrying the engine's ``channel`` for deployments using ``prefix``."""
    return f"{prefix}:{channel}"


def encode_id(task_id: str) -> str:
    """``task_id`` with ``%`` and ``,`` escaped (a no-op for generated, hex ids)."""
    if "%" in task_id or "," in task_id:
        return task_id.replace("%", "%25").replace(",", "%2C")
    return task_id


def decode_id(text: str) -> str:
    """The inverse of :func:`encode_id` (a single left-to-right pass, so it is exact)."""
    if "%" not in text:
        return text
    return _ESCAPED.sub(lambda m: _UNESCAPE[m.group(1)], text)


def decode_payload(payload: str) -> list[str]:
    """The ids in a message; ``[]`` for a look-again message."""
    return [decode_id(part) for part in payload.split(",") if part]


def encode_payloads(ids: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Comma-joined payloads of at most ``max_bytes`` characters each (an id longer than that
    travels alone). An empty ``ids`` gives one empty, look-again payload.

    Args:
        ids: task ids, already without duplicates.
        max_bytes: the size at which a payload is split.
    """
    chunk: list[str] = []
    size = 0
    for task_id in ids:
        part = encode_id(task_id)
        cost = len(part) + (1 if chunk else 0)
        if chunk and size + cost > max_bytes:
            yield ",".join(chunk)
            chunk, size, cost = [], 0, len(part)
        chunk.append(part)
        size += cost
    if chunk or size == 0:
        yield ",".join(chunk)


def merge_ids(pending: dict[str, None], ids: Sequence[str], limit: int) -> None:
    """Add ``ids`` (``[]`` meaning look-again, kept as ``""``) to an ordered set of pending
    ids, collapsing it to a single look-again marker once it holds more than ``limit``.

    A collapsed set still wakes every listener; it only loses which tasks finished, which
    their waiters then learn from their next database poll.
    """
    if not ids:
        pending[""] = None
    else:
        for task_id in ids:
            if task_id:
                pending[task_id] = None
    if len(pending) > limit:
        pending.clear()
        pending[""] = None

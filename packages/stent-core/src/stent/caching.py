"""Keys of ``idempotent`` and ``cached`` functions.

A key names one logical call: by default a digest of the function's name, its ``version``
and its canonical arguments (bound to the signature with defaults applied, keyword order
ignored), or ``name`` plus what ``idempotency_key_func`` returns. The result stored under a
key is handed to later calls with the same key without running the body.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .durable import DurableFunction
    from .serialization import Serializer

#: longest key an ``idempotency_key_func`` may return
MAX_KEY_LENGTH = 1000


def uses_cache(fn: DurableFunction[..., Any]) -> bool:
    """Whether calls of ``fn`` go through the result cache."""
    return fn.idempotent or fn.cached


def cache_key(
    fn: DurableFunction[..., Any], serializer: Serializer, args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> str:
    """The stored key of ``fn(*args, **kwargs)``: the function's name and a SHA-256 (of the
    user's key, or of ``version`` and the canonical arguments), so any key fits every
    backend's index whatever its length or characters.

    Raises:
        TypeError, ValueError: ``idempotency_key_func`` raised, or returned something other
            than a non-empty str of at most ``MAX_KEY_LENGTH`` characters.
    """
    if fn.idempotency_key_func is not None:
        key = user_key(fn, args, kwargs)
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{fn.name}|key|{digest}"
    try:
        bound = inspect.signature(fn.fn).bind(*args, **kwargs)
        bound.apply_defaults()
        canonical: Any = sorted(bound.arguments.items())
    except TypeError:  # arguments that do not fit the signature: the call itself will fail
        canonical = [list(args), sorted(kwargs.items())]
    h = hashlib.sha256((fn.version or "").encode("utf-8", "surrogatepass") + b"\x00")
    h.update(serializer.dumps(canonical))
    return f"{fn.name}|v|{h.hexdigest()}"


def user_key(fn: DurableFunction[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """What ``fn.idempotency_key_func`` returns for this call, checked."""
    assert fn.idempotency_key_func is not None
    key = fn.idempotency_key_func(*args, **kwargs)
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(
            f"idempotency_key_func of {fn.name} returned {key!r}: expected a non-empty str "
            f"of at most {MAX_KEY_LENGTH} characters"
        )
    return key

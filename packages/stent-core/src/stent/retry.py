"""``RetryPolicy`` and its storage form."""

from __future__ import annotations

import importlib
import math
import random
from dataclasses import dataclass
from typing import Any


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _load_class(path: str) -> type[BaseException] | None:
    module, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:
        return None
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing task is retried.

    Attempt ``n`` (1-based, the attempt that just failed) waits
    ``min(max_delay, initial_delay * backoff_factor ** (n - 1))`` seconds, varied by up to
    ``jitter`` of itself either way and never above ``max_delay``.

    Args:
        max_attempts: total attempts, the first included (1 = never retry).
        initial_delay: seconds before the second attempt.
        backoff_factor: growth of the delay per attempt.
        max_delay: cap on any delay.
        jitter: fraction (0..1) of random variation.
        retry_for: exception types that are retried.
        no_retry_for: exception types that are never retried (checked first).
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    backoff_factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.1
    retry_for: tuple[type[BaseException], ...] = (Exception,)
    no_retry_for: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        def bad(field: str, value: object, why: str) -> ValueError:
            return ValueError(f"RetryPolicy {field}={value!r} is invalid: {why}")

        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise bad("max_attempts", self.max_attempts, "expected an int >= 1")
        for name in ("initial_delay", "max_delay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise bad(name, v, "expected a finite number of seconds >= 0")
        b = self.backoff_factor
        if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b) or b < 1:
            raise bad("backoff_factor", b, "expected a finite number >= 1")
        j = self.jitter
        if isinstance(j, bool) or not isinstance(j, int | float) or not 0 <= j <= 1:
            raise bad("jitter", j, "expected a number between 0 and 1")
        for name in ("retry_for", "no_retry_for"):
            v = getattr(self, name)
            if isinstance(v, type):
                v = (v,)
                object.__setattr__(self, name, v)
            if not isinstance(v, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in v
            ):
                raise bad(name, v, "expected a tuple of exception classes")

    def delay_for(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.backoff_factor ** (attempt - 1))
        if self.jitter:
            r = (rng or random).uniform(-self.jitter, self.jitter)
            base = base * (1 + r)
        return max(0.0, min(self.max_delay, base))

    def should_retry(self, exc: BaseException, failed_attempts: int) -> bool:
        """Whether an attempt that raised ``exc`` gets another try.

        Args:
            exc: what the attempt raised.
            failed_attempts: attempts that have failed so far, this one included.
        """
        if failed_attempts >= self.max_attempts:
            return False
        if self.no_retry_for and isinstance(exc, self.no_retry_for):
            return False
        return isinstance(exc, self.retry_for)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (every field, exception classes by import path)."""
        return {
            "max_attempts": self.max_attempts,
            "initial_delay": self.initial_delay,
            "backoff_factor": self.backoff_factor,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
            "retry_for": [_class_path(t) for t in self.retry_for],
            "no_retry_for": [_class_path(t) for t in self.no_retry_for],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryPolicy:
        """Rebuild a stored policy. Classes that cannot be imported here are dropped from
        ``retry_for`` (so an unknown error type is not retried) and from ``no_retry_for``."""
        if not data:
            return cls()

        def classes(paths: list[str]) -> tuple[type[BaseException], ...]:
            return tuple(c for c in (_load_class(p) for p in paths) if c is not None)

        def field(name: str, kind: type[int] | type[float]) -> Any:
            try:
                return kind(data[name])
            except (KeyError, TypeError, ValueError):
                raise ValueError(
                    f"stored retry policy field {name!r} is {data.get(name, '<missing>')!r}, "
                    f"not {'an int' if kind is int else 'a number'}"
                ) from None

        return cls(
            max_attempts=field("max_attempts", int),
            initial_delay=field("initial_delay", float),
            backoff_factor=field("backoff_factor", float),
            max_delay=field("max_delay", float),
            jitter=field("jitter", float),
            retry_for=classes(data.get("retry_for", [])),
            no_retry_for=classes(data.get("no_retry_for", [])),
        )

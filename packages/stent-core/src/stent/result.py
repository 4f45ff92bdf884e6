"""``Result``: a value or an error, as returned by ``wait_for`` and ``result_of``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Result(Generic[T]):
    """The outcome of an execution or a step.

    A durable function may return a ``Result`` itself; it is handed back unchanged.

    Attributes:
        ok: True for a value, False for an error.
        value: the value when ``ok``.
        error: the exception when not ``ok``.
    """

    ok: bool
    value: T | None = None
    error: BaseException | None = None

    @classmethod
    def Ok(cls, value: T = None) -> Result[T]:  # type: ignore[assignment]
        """A successful result holding ``value``."""
        return cls(True, value, None)

    @classmethod
    def Error(cls, error: BaseException) -> Result[Any]:
        """A failed result holding ``error``."""
        return cls(False, None, error)

    def unwrap(self) -> T:
        """Return the value, or raise the error.

        Returns:
            The value of an ``Ok`` result.
        """
        if self.ok:
            return self.value  # type: ignore[return-value]
        assert self.error is not None
        raise self.error

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        if self.ok != other.ok:
            return False
        if self.ok:
            return bool(self.value == other.value)
        return type(self.error) is type(other.error) and (
            getattr(self.error, "args", None) == getattr(other.error, "args", None)
        )

    def __hash__(self) -> int:
        return hash((self.ok, repr(self.value), type(self.error)))

"""``FunctionRegistry``: registered durable functions by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import DuplicateFunctionError, UnregisteredFunctionError

if TYPE_CHECKING:
    from .durable import DurableFunction


class FunctionRegistry:
    """Durable functions by registered name."""

    def __init__(self) -> None:
        self._by_name: dict[str, DurableFunction[..., object]] = {}

    def register(self, fn: DurableFunction[..., object]) -> None:
        """Add ``fn``; re-registering the same module and qualname replaces the entry (module
        reloads), another function under a taken name raises ``DuplicateFunctionError``."""
        old = self._by_name.get(fn.name)
        if old is not None and old.origin != fn.origin:
            raise DuplicateFunctionError(
                f"durable function name {fn.name!r} is already registered by "
                f"{old.origin}; {fn.origin} cannot take it. Pass name=... to one of them"
            )
        self._by_name[fn.name] = fn

    def get(self, name: str) -> DurableFunction[..., object]:
        """The function registered as ``name``, or ``UnregisteredFunctionError``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnregisteredFunctionError(name, self._by_name) from None

    def find(self, name: str) -> DurableFunction[..., object] | None:
        """The function registered as ``name``, or None."""
        return self._by_name.get(name)

    def names(self) -> frozenset[str]:
        """Every registered name."""
        return frozenset(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_name))

    def __len__(self) -> int:
        return len(self._by_name)

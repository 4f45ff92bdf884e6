"""``@Stent.durable`` and ``DurableFunction``: the three call modes.

1. No executor anywhere: the body runs directly, as a plain coroutine.
2. Outside a task with a default executor: dispatch an execution and wait for it.
3. Inside a running task: a durable step (``steps.start_step``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from .context import current_task_context
from .durations import parse_optional_duration
from .names import check_positive_int, check_priority, check_queue, check_tags
from .registry import FunctionRegistry
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .app import Stent

P = ParamSpec("P")
R = TypeVar("R")

default_registry = FunctionRegistry()


class DurableFunction(Generic[P, R]):
    """A registered ``async def`` whose calls are durable inside tasks.

    Keeps the wrapped function's ``__name__``, ``__doc__`` and signature.
    """

    def __init__(
        self,
        fn: Callable[P, Coroutine[Any, Any, R]],
        *,
        name: str | None = None,
        retry_policy: RetryPolicy | None = None,
        queue: str | None = None,
        priority: int = 0,
        tags: Iterable[str] | None = None,
        max_concurrent: int | None = None,
        timeout: object = None,
        idempotent: bool = False,
        cached: bool = False,
        cache_ttl: object = None,
        idempotency_key_func: Callable[..., str] | None = None,
        version: str | None = None,
        registry: FunctionRegistry | None = None,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"@Stent.durable needs an 'async def' function; {fn!r} is not a coroutine function"
            )
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"invalid durable function name {name!r}: expected a non-empty str")
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a RetryPolicy, not {type(retry_policy).__name__}")
        if idempotency_key_func is not None and not callable(idempotency_key_func):
            raise TypeError("idempotency_key_func must be callable")
        self.fn = fn
        self.origin = f"{fn.__module__}:{fn.__qualname__}"
        self.name: str = name or self.origin
        self.retry_policy = retry_policy or RetryPolicy()
        self.queue = check_queue(queue)
        self.priority = check_priority(priority)
        self.tags = check_tags(tags)
        self.max_concurrent = check_positive_int("max_concurrent", max_concurrent)
        self.timeout: timedelta | None = parse_optional_duration(timeout)
        self.idempotent = bool(idempotent)
        self.cached = bool(cached)
        self.cache_ttl: timedelta | None = parse_optional_duration(cache_ttl)
        self.idempotency_key_func = idempotency_key_func
        self.version = version
        self.registry = registry if registry is not None else default_registry
        functools.update_wrapper(self, fn)
        self.registry.register(self)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<DurableFunction {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        ctx = current_task_context()
        if ctx is not None:
            from .steps import start_step

            # The step's sequence number is taken here, when the call is made, so that the
            # order of calls (not the order of awaits) decides the step keys.
            return start_step(ctx, self, args, kwargs)
        from .app import Stent

        executor = Stent.current()
        if executor is not None:
            return executor.call_and_wait(self, args, kwargs)
        return self.fn(*args, **kwargs)

    # -- fan-out ------------------------------------------------------------------------------
    def map(self, iterable: Iterable[Any]) -> Awaitable[list[R]]:
        """One call per item, in parallel; results in input order."""
        return self.starmap(((item,), {}) for item in iterable)

    def starmap(self, iterable: Iterable[Any]) -> Awaitable[list[R]]:
        """One call per argument tuple, ``(args, kwargs)`` pair or kwargs dict."""
        calls = [_normalise_call(item) for item in iterable]
        if current_task_context() is None:
            from .app import Stent

            executor = Stent.current()
            if executor is not None:
                return executor.call_and_wait(_builtin_map(), (self.name, calls), {})
        ctx = current_task_context()
        if ctx is not None and len(calls) > _INLINE_MAP_LIMIT:
            from .steps import start_map

            # A large fan-out: children inserted and awaited in batches (one write each).
            return start_map(ctx, self, calls)
        return _gather(_calls(self, calls))

    @property
    def executor(self) -> Stent | None:
        """The default executor, if any."""
        from .app import Stent

        return Stent.current()


#: a map of at most this many calls inside a task makes them one by one (each may run at once
#: on a free local slot); a longer one goes through storage in batches
_INLINE_MAP_LIMIT = 16


def _calls(
    fn: DurableFunction[..., R], calls: Iterable[tuple[tuple[Any, ...], dict[str, Any]]]
) -> list[Coroutine[Any, Any, R]]:
    """Make every call now (so a bad argument fails before anything runs); if one fails,
    close the coroutines already made instead of leaving them never awaited."""
    coros: list[Coroutine[Any, Any, R]] = []
    try:
        for a, k in calls:
            coros.append(fn(*a, **k))
    except BaseException:
        for c in coros:
            c.close()
        raise
    return coros


async def _gather(coros: list[Coroutine[Any, Any, R]]) -> list[R]:
    return list(await asyncio.gather(*coros))


def _normalise_call(item: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(item, dict):
        return (), dict(item)
    if (
        isinstance(item, tuple) and len(item) == 2
        and isinstance(item[0], tuple | list) and isinstance(item[1], dict)
    ):
        return tuple(item[0]), dict(item[1])
    if isinstance(item, tuple):
        return item, {}
    raise TypeError(f"starmap items must be tuples, (args, kwargs) pairs or dicts, not {item!r}")


async def _map_root(name: str, calls: list[Any]) -> list[Any]:
    """The root of a mode-2 ``map``: fans out to ``name`` once per call."""
    from .app import Stent

    fn = Stent.default_registry.get(name)
    # inside the root task: a long list goes out in batches (starmap decides)
    return await fn.starmap([_normalise_call(tuple(c)) for c in calls])


_MAP: DurableFunction[..., Any] | None = None


def _builtin_map() -> DurableFunction[..., Any]:
    global _MAP
    if _MAP is None:
        _MAP = DurableFunction(_map_root, name="stent.map", retry_policy=RetryPolicy(max_attempts=1))
    return _MAP


@overload
def durable(fn: Callable[P, Coroutine[Any, Any, R]], /) -> DurableFunction[P, R]: ...
@overload
def durable(
    fn: None = None, /, **options: Any
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], DurableFunction[P, R]]: ...
def durable(fn: Any = None, /, **options: Any) -> Any:
    """Mark an ``async def`` as durable. Works bare, with ``()`` and with options.

    Args:
        fn: the function, when used bare.
        **options: ``name``, ``retry_policy``, ``queue``, ``priority``, ``tags``,
            ``max_concurrent``, ``timeout``, ``idempotent``, ``cached``, ``cache_ttl``,
            ``idempotency_key_func``, ``version``, ``registry``.

    Returns:
        A ``DurableFunction`` (or a decorator making one).
    """
    known = {
        "name", "retry_policy", "queue", "priority", "tags", "max_concurrent", "timeout",
        "idempotent", "cached", "cache_ttl", "idempotency_key_func", "version", "registry",
    }
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown @Stent.durable option(s): {', '.join(sorted(unknown))}")
    if fn is not None:
        return DurableFunction(fn, **options)

    def decorate(f: Callable[P, Coroutine[Any, Any, R]]) -> DurableFunction[P, R]:
        return DurableFunction(f, **options)

    return decorate

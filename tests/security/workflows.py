"""Durable functions shared by the security tests (registered once, under ``security:``)."""

from __future__ import annotations

from typing import Any

from stent import RetryPolicy, Stent

#: two quick attempts: enough to show retries are bounded
TWICE = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0.0)


@Stent.durable(name="security:healthy")
async def healthy(x: int) -> int:
    return x * 2


@Stent.durable(name="security:echo")
async def echo(*args: Any, **kwargs: Any) -> Any:
    return [list(args), kwargs]


@Stent.durable(name="security:fails", retry_policy=TWICE)
async def fails() -> None:
    raise RuntimeError("always fails")


@Stent.durable(name="security:keyed_echo", idempotent=True,
               idempotency_key_func=lambda key, value: key)
async def keyed_echo(key: str, value: Any) -> Any:
    return value

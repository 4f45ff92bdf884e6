"""A chaos worker process with Redis wake-ups (``python -m tests.chaos.infra_app``): the same
process as ``tests.chaos.app``, which takes ``--redis URL --redis-prefix PREFIX`` (the
executor's notification backend is then a ``RedisBackend``). Kept as its own module name
for ``Fleet(module="tests.chaos.infra_app", extra_args=(...))``."""

from __future__ import annotations

from .app import main

if __name__ == "__main__":
    main()

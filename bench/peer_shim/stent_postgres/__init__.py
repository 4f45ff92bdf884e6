"""Import shim for the shared peers harness (bench-peers/adapters/stent_project.py).

That adapter does ``from stent_postgres import PostgresBackend, SQLiteBackend``; this
workspace's stent_postgres has no PostgresBackend yet, so the import (and the adapter) fails
even for SQLite runs. Put this directory first on the path with
``STENT_PROJECT_PATH=bench/peer_shim``: it loads the REAL stent_postgres package (its
``__path__`` points at the real one, so ``stent_postgres.sqlite`` etc. are the project's own
modules) and only adds a ``PostgresBackend`` placeholder that raises when used.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from typing import Any

_shim_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_search = [p for p in sys.path if os.path.abspath(p or os.curdir) != _shim_root]
_spec = importlib.machinery.PathFinder.find_spec("stent_postgres", _search)
if _spec is None or _spec.origin is None or not _spec.submodule_search_locations:
    raise ImportError("the real stent_postgres package is not installed")
__path__ = list(_spec.submodule_search_locations)
__file__ = _spec.origin
__spec__ = _spec  # importlib.resources reads the schema/queries through the spec
with open(_spec.origin, encoding="utf-8") as _f:
    exec(compile(_f.read(), _spec.origin, "exec"), globals())

_real_getattr = globals().get("__getattr__")


class PostgresBackend:
    """Placeholder: this workspace has no PostgreSQL backend yet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ImportError("stent_postgres.PostgresBackend is not implemented in this workspace")


def __getattr__(name: str) -> Any:
    if _real_getattr is None:
        raise AttributeError(name)
    return _real_getattr(name)

"""The golden histories replayed in CI (``tests/kit/golden/*.json``), and how to regenerate
them.

Regenerate after a deliberate change to one of these workflows (a changed history means
executions started by the old code cannot resume under the new one: say so in the change)::

    uv run python -m tests.kit.golden_histories
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stent.cli.demo_workflow import place_order
from stent.registry import FunctionRegistry
from stent_testing import record_history

from .workflows import KIT, onboard_user

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


@dataclass(frozen=True)
class Golden:
    """One golden history: which workflow, called how."""

    name: str
    workflow: Any
    args: tuple[Any, ...]
    registry: FunctionRegistry | None = None

    @property
    def path(self) -> Path:
        """Where its JSON lives."""
        return GOLDEN_DIR / f"{self.name}.json"


GOLDENS = (
    # The journal is /dev/null: a replay runs the workflow body, which writes to it.
    Golden("demo_place_order", place_order, ("order-1001", "/dev/null")),
    Golden("kit_onboard_user", onboard_user, ("ada@example.com",), KIT),
)


def dump(history: dict[str, Any]) -> str:
    """A history as the golden files hold it."""
    return json.dumps(history, indent=2) + "\n"


async def regenerate(directory: Path = GOLDEN_DIR, names: Iterable[str] | None = None
                     ) -> list[Path]:
    """Run each golden workflow to its end and write its history under ``directory``.

    Args:
        directory: where to write ``<name>.json``.
        names: only these goldens (default: all).

    Returns:
        The files written.
    """
    wanted = set(names) if names is not None else None
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for golden in GOLDENS:
        if wanted is not None and golden.name not in wanted:
            continue
        history = await record_history(golden.workflow, *golden.args,
                                       execution_id=f"golden-{golden.name}",
                                       registry=golden.registry)
        path = directory / f"{golden.name}.json"
        path.write_text(dump(history), encoding="utf-8")
        written.append(path)
    return written


def main() -> None:
    """Regenerate every golden history."""
    for path in asyncio.run(regenerate()):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Every ``python`` block of ``docs/testing.md`` is a test module that passes, run the way a
user's project runs it (a separate pytest, the plugin from its entry point)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .subprocess_pytest import run_pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[str, str]]:
    """``(id, source)`` of each python block, the id naming the section it is in."""
    text = GUIDE.read_text(encoding="utf-8")
    blocks = []
    for n, match in enumerate(_BLOCK.finditer(text), 1):
        headings = re.findall(r"^## (.+)$", text[:match.start()], re.M)
        section = re.sub(r"\W+", "-", headings[-1].lower()).strip("-") if headings else "top"
        blocks.append((f"{n}-{section}", match.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_the_guide_has_a_block_for_every_topic() -> None:
    sections = {block_id.split("-", 1)[1] for block_id, _ in BLOCKS}
    assert {"unit-testing-a-step", "testing-a-workflow-end-to-end", "a-30-day-workflow-in-a-test",
            "crash-tests", "replay-tests-in-ci", "switching-backends"} <= sections


@pytest.mark.parametrize("source", [s for _, s in BLOCKS], ids=[i for i, _ in BLOCKS])
def test_guide_block_runs_and_passes(tmp_path: Path, source: str) -> None:
    run = run_pytest(tmp_path, source, "-o", "asyncio_mode=auto", name="test_guide_block.py")
    assert run.returncode == 0, run.output
    assert run.count("passed") >= 1 and run.count("failed") == 0, run.output

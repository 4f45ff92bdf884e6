"""Durable functions for the ``stent signal`` tests.

Imported by the tests (as ``tests.cli.signal_workflows``) and by ``stent worker``
subprocesses (as ``signal_workflows``, from this directory): every function has an explicit
``name=`` so that both register the same names.
"""

from __future__ import annotations

from stent import Stent


@Stent.durable(name="cli.await_approval")
async def await_approval(order: str) -> dict[str, object]:
    """Waits for signal ``approve`` and returns its payload with the order."""
    decision = await Stent.wait_for_signal("approve")
    return {"order": order, "decision": decision}

"""The order workflow that ``stent demo`` runs, kills and resumes.

``place_order`` calls four steps, each its own durable function. Every step body writes a
``start`` and an ``end`` line to a journal file (JSON: step, event, pid, time), so the demo can
show afterwards which process ran which step, and how many times.

The functions have explicit names (``demo.*``) because the worker subprocess imports this
module under its own name and the names must match what the demo dispatched.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from stent import Stent

__all__ = [
    "STEPS",
    "STEP_SECONDS",
    "WORKFLOW",
    "charge_payment",
    "create_shipment",
    "journal_event",
    "place_order",
    "reserve_inventory",
    "send_confirmation",
]

STEP_SECONDS = 0.3
"""How long each step's body takes, so that a kill lands while a step is running."""

STEPS = ("reserve_inventory", "charge_payment", "create_shipment", "send_confirmation")
"""The steps of ``place_order``, in the order it calls them."""

WORKFLOW = "place_order"
"""The journal name of the workflow function itself."""

ORDER_ITEMS: list[dict[str, Any]] = [
    {"sku": "MUG-BLUE", "qty": 2, "unit_cents": 1250},
    {"sku": "TEA-EARLGREY-250G", "qty": 1, "unit_cents": 899},
]


def journal_event(journal: str, step: str, event: str) -> None:
    """Append one JSON line ``{step, event, pid, time}`` to ``journal``.

    One ``write`` of one line on an ``O_APPEND`` descriptor: lines from different processes
    never interleave, and a process killed mid-step leaves only whole lines behind.
    """
    line = json.dumps({"step": step, "event": event, "pid": os.getpid(), "time": time.time()})
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
    finally:
        os.close(fd)


async def _work(journal: str, step: str) -> None:
    journal_event(journal, step, "start")
    await asyncio.sleep(STEP_SECONDS)  # stands in for a call to another service


@Stent.durable(name="demo.reserve_inventory")
async def reserve_inventory(order_id: str, items: list[dict[str, Any]],
                            journal: str) -> dict[str, Any]:
    """Hold stock for every line of the order."""
    await _work(journal, "reserve_inventory")
    result = {
        "reservation_id": f"res-{order_id}",
        "warehouse": "AMS-1",
        "units": sum(int(item["qty"]) for item in items),
    }
    journal_event(journal, "reserve_inventory", "end")
    return result


@Stent.durable(name="demo.charge_payment")
async def charge_payment(order_id: str, amount_cents: int, journal: str) -> dict[str, Any]:
    """Charge the customer's card (the step nobody wants to run twice)."""
    await _work(journal, "charge_payment")
    # A real payment API would get Stent.context().idempotency_key as its idempotency key.
    result = {
        "charge_id": f"ch-{order_id}",
        "amount_cents": amount_cents,
        "currency": "EUR",
        "status": "captured",
    }
    journal_event(journal, "charge_payment", "end")
    return result


@Stent.durable(name="demo.create_shipment")
async def create_shipment(order_id: str, reservation_id: str, journal: str) -> dict[str, Any]:
    """Book a parcel for the reserved stock."""
    await _work(journal, "create_shipment")
    result = {
        "shipment_id": f"shp-{order_id}",
        "reservation_id": reservation_id,
        "carrier": "PostNL",
        "tracking": f"3SDEMO{sum(map(ord, order_id)):06d}",
    }
    journal_event(journal, "create_shipment", "end")
    return result


@Stent.durable(name="demo.send_confirmation")
async def send_confirmation(order_id: str, email: str, tracking: str,
                            journal: str) -> dict[str, Any]:
    """E-mail the customer their tracking code."""
    await _work(journal, "send_confirmation")
    result = {"message_id": f"msg-{order_id}", "to": email, "tracking": tracking}
    journal_event(journal, "send_confirmation", "end")
    return result


@Stent.durable(name="demo.place_order")
async def place_order(order_id: str, journal: str) -> dict[str, Any]:
    """The workflow: reserve, charge, ship, confirm. Each call is a durable step.

    After a crash this body runs again from the top on another worker; the steps that had
    completed return their stored results instead of running again.
    """
    journal_event(journal, WORKFLOW, "start")
    amount = sum(int(item["qty"]) * int(item["unit_cents"]) for item in ORDER_ITEMS)
    reservation = await reserve_inventory(order_id, ORDER_ITEMS, journal)
    charge = await charge_payment(order_id, amount, journal)
    shipment = await create_shipment(order_id, reservation["reservation_id"], journal)
    confirmation = await send_confirmation(order_id, "customer@example.com",
                                           shipment["tracking"], journal)
    journal_event(journal, WORKFLOW, "end")
    return {
        "order_id": order_id,
        "status": "confirmed",
        "charged_cents": charge["amount_cents"],
        "tracking": shipment["tracking"],
        "message_id": confirmation["message_id"],
    }

"""Small workflows that the kit's own tests run, crash and replay.

Their names are explicit (``kit.*``) so that golden histories keep matching whatever module
path imports them. They live in their own registry, ``KIT`` (the kit's tests serve it through
``stent_executor_options``, see ``conftest.py``), so that they do not crowd the default
registry other tests inspect.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stent import RetryPolicy, Stent
from stent.registry import FunctionRegistry

KIT = FunctionRegistry()
"""The registry of every durable function of the kit's tests."""

# -- onboarding: steps, a recorded value, a parallel pair, a long durable sleep ---------------------


@Stent.durable(name="kit.create_account", registry=KIT)
async def create_account(email: str) -> dict[str, str]:
    """Open an account for ``email``."""
    return {"account_id": f"acct-{email.split('@')[0]}", "email": email}


@Stent.durable(name="kit.send_email", registry=KIT)
async def send_email(to: str, template: str) -> str:
    """Send one templated e-mail; returns a message id."""
    return f"msg-{template}-{to}"


@Stent.durable(name="kit.grant_trial", registry=KIT)
async def grant_trial(account_id: str, days: int) -> dict[str, Any]:
    """Give the account a free trial."""
    return {"account_id": account_id, "days": days}


@Stent.durable(name="kit.onboard_user", registry=KIT)
async def onboard_user(email: str) -> dict[str, Any]:
    """Create the account, welcome the user and start a trial at once, then remind them a
    day before the 30-day trial ends."""
    account = await create_account(email)
    started = await Stent.now()
    welcome, trial = await asyncio.gather(
        send_email(email, "welcome"), grant_trial(account["account_id"], 30)
    )
    await Stent.sleep("29d")
    reminder = await send_email(email, "trial-ending")
    return {
        "account_id": account["account_id"],
        "welcome": welcome,
        "trial_days": trial["days"],
        "reminder": reminder,
        "started": started.isoformat(),
    }


# -- an order with a pause in the middle: the crash scenario ---------------------------------------


@Stent.durable(name="kit.reserve", registry=KIT)
async def reserve(order_id: str) -> str:
    """Hold stock."""
    return f"res-{order_id}"


@Stent.durable(name="kit.charge", registry=KIT)
async def charge(order_id: str, amount_cents: int) -> str:
    """Charge the card (the step that must not run twice once recorded)."""
    return f"ch-{order_id}-{amount_cents}"


@Stent.durable(name="kit.ship", registry=KIT)
async def ship(order_id: str, reservation: str) -> str:
    """Book the parcel."""
    return f"shp-{order_id}-{reservation}"


@Stent.durable(name="kit.order", registry=KIT)
async def order(order_id: str) -> list[str]:
    """Reserve, wait ten minutes for fraud checks, charge, ship."""
    reservation = await reserve(order_id)
    await Stent.sleep("10m")
    charged = await charge(order_id, 4200)
    shipped = await ship(order_id, reservation)
    return [reservation, charged, shipped]


ORDER_RESULT = ["res-o-1", "ch-o-1-4200", "shp-o-1-res-o-1"]
"""What ``order("o-1")`` returns."""


# -- a trial: a 30-day sleep, then a flaky step retried with minute-long backoffs ----------------

flaky_failures = {"left": 0}
"""How many more times ``bill_after_trial`` fails (tests set it)."""


@Stent.durable(
    name="kit.bill_after_trial", registry=KIT,
    retry_policy=RetryPolicy(max_attempts=5, initial_delay=60, backoff_factor=2, max_delay=600,
                             jitter=0),
)
async def bill_after_trial(account_id: str) -> str:
    """Bill the account; fails ``flaky_failures["left"]`` times first."""
    if flaky_failures["left"] > 0:
        flaky_failures["left"] -= 1
        raise ConnectionError("billing service unavailable")
    return f"invoice-{account_id}"


@Stent.durable(name="kit.trial", registry=KIT)
async def trial(account_id: str) -> str:
    """Sleep for the 30-day trial, then bill (with retries)."""
    await Stent.sleep("30d")
    return await bill_after_trial(account_id)

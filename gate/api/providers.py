"""Payment providers' webhooks: signed by the provider, idempotent by event and payment id.

A provider event is input, not an order (docs/payments.md): it credits a workspace only when
it names a payment Gate recorded before calling the provider (`gate:stripe:pi:<id>`, written
by gate/wallet/stripe_provider.py), and then at Gate's recorded amount. Anything else is
answered 200 (the provider must not retry it), logged once and counted in
`gate_provider_events_ignored_total{reason}`; an event whose amount, currency or workspace
differs from Gate's record is refused and logged as an error for the operator.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import stripe
from aiohttp import web

from gate.api.http import CTX, json
from gate.errors import NotFound, ValidationFailed
from gate.metrics import PROVIDER_EVENTS_IGNORED
from gate.store import keys
from gate.store.redis_client import text
from gate.wallet.reconcile import credit_payment
from gate.wallet.stripe_provider import pi_key

log = logging.getLogger("gate.api.providers")

EVENT_TTL_S = 30 * 86400
TOLERANCE_S = stripe.Webhook.DEFAULT_TOLERANCE  # 300 s, either way


async def stripe_webhook(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    secret = ctx.settings.stripe_webhook_secret
    if ctx.settings.payments != "stripe" or not secret:
        raise NotFound("Stripe is not this Gate's payment provider (GATE_PAYMENTS=stripe)")
    payload = await request.read()
    header = request.headers.get("Stripe-Signature", "")
    try:
        _refuse_future(header)
        event = stripe.Webhook.construct_event(payload.decode(), header, secret, TOLERANCE_S)
    except (ValueError, stripe.SignatureVerificationError) as err:
        raise ValidationFailed(
            "the Stripe-Signature header does not verify this body with "
            "GATE_STRIPE_WEBHOOK_SECRET, or its time is more than 5 minutes from Gate's "
            "(check the server clock); nothing was changed",
            field="Stripe-Signature",
        ) from err
    seen = f"{keys.PREFIX}:stripe:evt:{event.id}"
    if await ctx.client.exists(seen):
        PROVIDER_EVENTS_IGNORED.labels("duplicate").inc()
        return json({"received": True, "duplicate": True})
    body = orjson.loads(payload)  # verified above: plain JSON now
    outcome: bool | str = "unhandled_type"
    if event.type == "payment_intent.succeeded":
        outcome = await _credit(request, event.id, body["data"]["object"])
    # Marked after the work: an event whose handling failed is handled again on its retry.
    await ctx.client.set(seen, 1, ex=EVENT_TTL_S)
    if isinstance(outcome, str):
        return _ignored(event.id, event.type, outcome)
    return json({"received": True, "credited": outcome})


def _refuse_future(header: str) -> None:
    """stripe.Webhook checks only that a signature is not too old; Gate also refuses one
    dated in the future beyond the tolerance (a clock that lies either way is refused)."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and int(value) > time.time() + TOLERANCE_S:
            raise ValueError("signature timestamp in the future")


def _ignored(event_id: str, event_type: str, reason: str) -> web.StreamResponse:
    PROVIDER_EVENTS_IGNORED.labels(reason).inc()
    if reason != "mismatch":  # a mismatch was logged as an error already
        log.info("Stripe event %s (%s) ignored: %s", event_id, event_type, reason)
    return json({"received": True, "credited": False, "ignored": reason})


async def _credit(request: web.Request, event_id: str, intent: dict[str, Any]) -> bool | str:
    """Credit a succeeded PaymentIntent Gate recorded, at Gate's amount, once.

    Returns whether this event credited it, or the reason it was ignored.
    """
    ctx = request.app[CTX]
    intent_id = str(intent.get("id", ""))
    record = await ctx.client.get(pi_key(intent_id)) if intent_id else None
    if record is None:
        return "unknown_payment"  # forged, another system's payment, or a verification charge
    workspace_id, gate_key, micros, method, *rest = text(record).split("|")
    currency = rest[0] if rest else "usd"
    if intent.get("status", "succeeded") != "succeeded":
        return "not_succeeded"
    claimed_ws = (intent.get("metadata") or {}).get("workspace_id")
    amount = intent.get("amount")
    if (
        not isinstance(amount, int)
        or amount * 10_000 != int(micros)
        or str(intent.get("currency", "")).lower() != currency
        or (claimed_ws is not None and claimed_ws != workspace_id)
    ):
        log.error(
            "Stripe event %s for PaymentIntent %s differs from Gate's record (workspace %s, "
            "%s micros %s; the event says workspace %s, %r cents %r): not credited, check "
            "the payment in the Stripe dashboard",
            event_id, intent_id, workspace_id, micros, currency, claimed_ws, amount,
            intent.get("currency"),
        )  # fmt: skip
        return "mismatch"
    if not gate_key:
        return "unknown_payment"
    return await credit_payment(ctx, workspace_id, gate_key, intent_id, int(micros), method)

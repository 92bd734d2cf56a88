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
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import stripe
from aiohttp import web

from gate.api.http import CTX, METHODS, json, read_body
from gate.context import Context
from gate.errors import NotFound, ValidationFailed
from gate.metrics import PROVIDER_EVENTS_IGNORED
from gate.store import keys
from gate.store.redis_client import text
from gate.wallet import reconcile
from gate.wallet.reconcile import Recorded, credit_payment
from gate.wallet.stripe_provider import StripeProvider, pi_key

log = logging.getLogger("gate.api.providers")

EVENT_TTL_S = 30 * 86400
TOLERANCE_S = stripe.Webhook.DEFAULT_TOLERANCE  # 300 s, either way


async def stripe_webhook(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    secret = ctx.settings.stripe_webhook_secret
    if ctx.settings.payments != "stripe" or not secret:
        raise NotFound("Stripe is not this Gate's payment provider (GATE_PAYMENTS=stripe)")
    # Unauthenticated: the cheap checks first, then a small body with a short deadline.
    signature = request.headers.get("Stripe-Signature", "")
    if not signature.startswith("t="):
        raise ValidationFailed(
            "a Stripe webhook needs its Stripe-Signature header (t=...,v1=...); nothing was "
            "changed",
            field="Stripe-Signature",
        )
    s = ctx.settings
    payload = await read_body(
        request, s.unauthenticated_body_timeout_s, s.unauthenticated_body_max_bytes
    )
    try:
        _refuse_future(signature)
        event = stripe.Webhook.construct_event(payload.decode(), signature, secret, TOLERANCE_S)
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
    handler = _HANDLERS.get(event.type)
    outcome: bool | str = "unhandled_type"
    if handler is not None:
        outcome = await handler(request, event.id, body["data"]["object"])
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


async def _recorded(request: web.Request, intent_id: object) -> Recorded | None:
    if not isinstance(intent_id, str) or not intent_id:
        return None
    raw = await request.app[CTX].client.get(pi_key(intent_id))
    return None if raw is None else Recorded.parse(text(raw))


def _mismatch(event_id: str, what: str, payment: Recorded, cents: object, currency: object) -> str:
    log.error(
        "Stripe event %s (%s) does not fit Gate's record of the payment (workspace %s, %d "
        "micros %s; the event says %r cents %r): nothing booked, check it in the Stripe "
        "dashboard",
        event_id, what, payment.workspace_id, payment.amount_micros, payment.currency, cents,
        currency,
    )  # fmt: skip
    return "mismatch"


def _cents_within(payment: Recorded, cents: object, currency: object) -> int | None:
    """The amount in micros when it is a positive amount no larger than the payment, in the
    payment's currency; None otherwise."""
    if not isinstance(cents, int) or isinstance(cents, bool) or cents <= 0:
        return None
    if str(currency or "").lower() != payment.currency or cents * 10_000 > payment.amount_micros:
        return None
    return cents * 10_000


async def _dispute(request: web.Request, event_id: str, dispute: dict[str, Any]) -> bool | str:
    """charge.dispute.created: debit the disputed amount of a payment Gate recorded."""
    if str(dispute.get("status", "")).startswith("warning_"):
        return "inquiry"  # an inquiry withdraws no money
    return await _book_dispute(request, event_id, dispute, reconcile.dispute_opened)


async def _dispute_closed(
    request: web.Request, event_id: str, dispute: dict[str, Any]
) -> bool | str:
    """charge.dispute.closed: a won dispute credits the amount back; a lost one stays."""
    if dispute.get("status") != "won":
        return "dispute_not_won"
    return await _book_dispute(request, event_id, dispute, reconcile.dispute_won)


async def _book_dispute(
    request: web.Request,
    event_id: str,
    dispute: dict[str, Any],
    book: Callable[[Context, Recorded, str, str, int], Awaitable[bool]],
) -> bool | str:
    payment = await _recorded(request, dispute.get("payment_intent"))
    if payment is None:
        return "unknown_payment"
    micros = _cents_within(payment, dispute.get("amount"), dispute.get("currency"))
    if micros is None:
        return _mismatch(event_id, "dispute", payment, dispute.get("amount"),
                         dispute.get("currency"))  # fmt: skip
    intent_id, dispute_id = str(dispute["payment_intent"]), str(dispute.get("id", ""))
    return await book(request.app[CTX], payment, intent_id, dispute_id, micros)


async def _refunded(request: web.Request, event_id: str, charge: dict[str, Any]) -> bool | str:
    """charge.refunded: debit each refund of a payment Gate recorded, once per refund id.

    The event's charge lists its refunds in older API versions; otherwise they are read
    from Stripe. Refunds Gate made itself (metadata gate_refund) were booked already.
    """
    payment = await _recorded(request, charge.get("payment_intent"))
    if payment is None:
        return "unknown_payment"
    listed = (charge.get("refunds") or {}).get("data")
    if listed is None:
        provider = request.app[METHODS].payments
        if not isinstance(provider, StripeProvider):
            return "unknown_payment"
        listed = await provider.refunds_of(str(charge.get("id", "")))
    booked = False
    for refund in listed:
        if refund.get("status") not in ("succeeded", "pending"):
            continue
        if (refund.get("metadata") or {}).get("gate_refund"):
            continue
        micros = _cents_within(payment, refund.get("amount"), refund.get("currency"))
        if micros is None:
            return _mismatch(event_id, "refund", payment, refund.get("amount"),
                             refund.get("currency"))  # fmt: skip
        ctx = request.app[CTX]
        intent_id = str(charge["payment_intent"])
        refund_id = str(refund.get("id", ""))
        booked |= await reconcile.card_refunded(ctx, payment, intent_id, refund_id, micros)
    return booked


_Handler = Callable[[web.Request, str, dict[str, Any]], Awaitable[bool | str]]
_HANDLERS: dict[str, _Handler] = {
    "payment_intent.succeeded": _credit,
    "charge.dispute.created": _dispute,
    "charge.dispute.closed": _dispute_closed,
    "charge.refunded": _refunded,
}

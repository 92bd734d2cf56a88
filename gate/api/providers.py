"""Payment providers' webhooks: signed by the provider, idempotent by event and payment id."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import stripe
from aiohttp import web

from gate.api.http import CTX, json, read_body
from gate.errors import NotFound, ValidationFailed
from gate.store import keys
from gate.store.redis_client import text
from gate.wallet.reconcile import credit_payment
from gate.wallet.stripe_provider import pi_key

log = logging.getLogger("gate.api.providers")

EVENT_TTL_S = 30 * 86400


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
        event = stripe.Webhook.construct_event(payload.decode(), signature, secret)
    except (ValueError, stripe.SignatureVerificationError) as err:
        raise ValidationFailed(
            "the Stripe-Signature header does not verify this body with "
            "GATE_STRIPE_WEBHOOK_SECRET (or is older than 5 minutes); nothing was changed",
            field="Stripe-Signature",
        ) from err
    seen = f"{keys.PREFIX}:stripe:evt:{event.id}"
    if await ctx.client.exists(seen):
        return json({"received": True, "duplicate": True})
    credited = False
    if event.type == "payment_intent.succeeded":
        intent = orjson.loads(payload)["data"]["object"]  # verified above: plain JSON now
        credited = await _credit(request, intent)
    await ctx.client.set(seen, 1, ex=EVENT_TTL_S)
    return json({"received": True, "credited": credited})


async def _credit(request: web.Request, intent: dict[str, Any]) -> bool:
    """Credit a succeeded PaymentIntent Gate charged, if Gate did not credit it yet."""
    ctx = request.app[CTX]
    intent_id, cents = str(intent["id"]), int(intent["amount"])
    metadata = intent.get("metadata") or {}
    workspace_id, gate_key = metadata.get("workspace_id"), metadata.get("gate_key")
    method = intent.get("payment_method") or ""
    if isinstance(method, dict):
        method = method.get("id", "")
    record = await ctx.client.get(pi_key(intent_id))
    if record is not None:  # Gate's own record (some Stripe look-alikes drop metadata)
        workspace_id, gate_key, _, method = text(record).split("|", 3)
    if not workspace_id or not gate_key:
        return False  # a verification charge, or a payment Gate did not make
    return await credit_payment(ctx, workspace_id, gate_key, intent_id, cents * 10_000, method)

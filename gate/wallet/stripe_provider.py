"""The Stripe payment provider, with the official `stripe` package (async StripeClient).

Stripe API calls used: Customers (one per workspace, `customers.create`), PaymentMethods
(`payment_methods.retrieve`, `attach`, `detach`), off-session PaymentIntents confirmed at
once (`payment_intents.create` with `confirm`, `off_session`, the Gate idempotency key as
Stripe's `idempotency_key`, and `metadata` naming the workspace and the key), `retrieve`,
`list`, and Refunds (`refunds.create`, for the verification charge).

Write-ahead (docs/payments.md): a charge is recorded in Redis *before* Stripe is called
(`gate:{ws}:stripe` hash, field `pay:<gate key>` -> amount, currency, method, and the
PaymentIntent id once Stripe named it). A retry with the same key finds the PaymentIntent by
its recorded id or, when Gate died between Stripe's answer and the record, by listing the
PaymentIntents and matching Gate's metadata; only when none exists is a new one created. So a
crash anywhere charges once, even on a provider that ignores `idempotency_key`.
PaymentIntent ids also map back to their workspace, key, amount and currency
(`gate:stripe:pi:<id>`): the webhook route credits only payments found there.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import orjson
import stripe
from redis.asyncio import Redis, RedisCluster
from stripe import PaymentIntent
from stripe.params import PaymentIntentCreateParams

from gate.store import keys
from gate.store.redis_client import text
from gate.tenancy.directory import member
from gate.wallet.payments import VERIFY_MICROS, MethodInfo, Payment, PaymentError

log = logging.getLogger("gate.wallet.stripe")

RECORD_TTL_S = 90 * 86400  # how long a charge's key and PaymentIntent records are kept
CURRENCY = "usd"
FAILED = ("requires_payment_method", "canceled")  # a PaymentIntent that charged nothing


def pi_key(payment_intent_id: str) -> str:
    """Global record of one PaymentIntent: "<workspace>|<key>|<micros>|<method>|<currency>"."""
    return f"{keys.PREFIX}:stripe:pi:{payment_intent_id}"


class StripeProvider:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        api_key: str,
        api_base: str | None = None,
        crash_at: str = "",
    ) -> None:
        self.redis = redis
        self.crash_at = crash_at  # chaos tests only (GATE_CRASH_AT)
        self._http = stripe.AIOHTTPClient()
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self._http,
            max_network_retries=2,
        )

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    def _records(self, workspace_id: str) -> str:
        return f"{keys.for_workspace(workspace_id).ws}:stripe"

    async def _customer(self, workspace_id: str) -> str:
        records = self._records(workspace_id)
        found = await self.redis.hget(records, "customer")
        if found:
            return text(found)
        customer = await self.client.v1.customers.create_async(
            {"metadata": {"workspace_id": workspace_id}},
            {"idempotency_key": f"customer-{workspace_id}"},
        )
        # The operator's directory first (gate/tenancy/directory.py): never missing a customer.
        await self.redis.zadd(keys.DIRECTORY.customers, {member(customer.id, workspace_id): 0})
        # Two racing first charges may both create one; the first one stored wins.
        if not await self.redis.hsetnx(records, "customer", customer.id):
            return text(await self.redis.hget(records, "customer") or customer.id)
        return str(customer.id)

    async def check_method(self, workspace_id: str, payment_method_id: str) -> None:
        try:
            await self.client.v1.payment_methods.retrieve_async(payment_method_id)
        except stripe.InvalidRequestError as err:
            raise PaymentError(
                f"unknown payment method {payment_method_id!r} at Stripe; add cards with "
                "POST /v1/wallet/payment_methods",
                declined=False,
            ) from err

    async def verify(self, workspace_id: str, payment_method_id: str) -> MethodInfo:
        customer = await self._customer(workspace_id)
        try:
            method = await self.client.v1.payment_methods.attach_async(
                payment_method_id, {"customer": customer}
            )
            intent = await self.client.v1.payment_intents.create_async(
                self._intent(customer, payment_method_id, VERIFY_MICROS, workspace_id, "")
            )
            if intent.status != "succeeded":  # 3-D Secure: requires_action, nothing charged
                await self.client.v1.payment_intents.cancel_async(intent.id)
                await self.client.v1.payment_methods.detach_async(payment_method_id)
                raise PaymentError(
                    f"this card asks for authentication (3-D Secure; the payment is "
                    f"{intent.status}), which Gate cannot complete yet; nothing was charged "
                    "or stored. Use another card.",
                    declined=True,
                )
            await self._refund_checked(intent.id)
        except stripe.CardError as err:
            raise PaymentError(_decline_message(err), declined=True) from err
        except stripe.InvalidRequestError as err:
            raise PaymentError(
                f"Stripe refused payment method {payment_method_id!r}: {err.user_message or err}",
                declined=False,
            ) from err
        card = method.card
        return MethodInfo(
            str(method.id),
            card.brand if card else None,
            card.last4 if card else None,
            card.exp_month if card else None,
            card.exp_year if card else None,
        )

    async def _refund_checked(self, intent_id: str) -> None:
        """Refund the verification charge and check that Stripe took the refund; retried
        (same idempotency key) when it failed, an error logged if it keeps failing."""
        for attempt in range(3):
            refund = await self.client.v1.refunds.create_async(
                {"payment_intent": intent_id}, {"idempotency_key": f"gate-verify-{intent_id}"}
            )
            if refund.status in ("succeeded", "pending"):
                return
            log.warning("verification refund of %s is %s (try %d)", intent_id, refund.status,
                        attempt + 1)  # fmt: skip
        log.error("verification charge %s could not be refunded: refund it in the Stripe "
                  "dashboard", intent_id)  # fmt: skip

    async def detach(self, workspace_id: str, payment_method_id: str) -> None:
        try:
            await self.client.v1.payment_methods.detach_async(payment_method_id)
        except stripe.StripeError as err:
            raise PaymentError(str(err), declined=False) from err

    async def charge(
        self, workspace_id: str, payment_method_id: str, amount_micros: int, idempotency_key: str
    ) -> Payment:
        records = self._records(workspace_id)
        field = f"pay:{idempotency_key}"
        ahead = orjson.dumps(
            {"amount_micros": amount_micros, "currency": CURRENCY, "pm": payment_method_id}
        )
        # Write-ahead: the record exists before Stripe hears of the charge.
        if await self.redis.hsetnx(records, field, ahead):
            known: dict[str, Any] = {}
        else:
            known = orjson.loads(await self.redis.hget(records, field) or b"{}")
        customer = await self._customer(workspace_id)
        intent = None
        if known.get("intent"):
            intent = await self.client.v1.payment_intents.retrieve_async(known["intent"])
        elif known:  # an earlier attempt may have died between Stripe's answer and the record
            intent = await self._find(workspace_id, customer, idempotency_key)
        if intent is not None and intent.status in FAILED:
            intent = None  # declined or given up: a new attempt may charge
        if intent is None:
            try:
                intent = await self.client.v1.payment_intents.create_async(
                    self._intent(
                        customer, payment_method_id, amount_micros, workspace_id, idempotency_key
                    ),
                    {"idempotency_key": f"gate-{workspace_id}-{idempotency_key}"},
                )
            except stripe.CardError as err:
                raise PaymentError(_decline_message(err), declined=True) from err
            except stripe.InvalidRequestError as err:
                raise PaymentError(f"Stripe refused the charge: {err}", declined=False) from err
            if self.crash_at == "payment_created":
                os.kill(os.getpid(), signal.SIGKILL)  # chaos tests: die before the record
        await self._record(workspace_id, idempotency_key, amount_micros, payment_method_id, intent)
        if intent.status != "succeeded":
            raise PaymentError(
                f"the charge needs the cardholder (status {intent.status}); top up by hand",
                declined=True,
            )
        return Payment(str(intent.id), amount_micros, payment_method_id)

    async def _record(
        self, workspace_id: str, key: str, micros: int, method: str, intent: PaymentIntent
    ) -> None:
        """Name the PaymentIntent in the write-ahead record and in the global id record."""
        record = {"amount_micros": micros, "currency": CURRENCY, "pm": method, "intent": intent.id}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._records(workspace_id), f"pay:{key}", orjson.dumps(record))
            pipe.set(
                pi_key(intent.id),
                f"{workspace_id}|{key}|{micros}|{method}|{CURRENCY}",
                ex=RECORD_TTL_S,
            )
            await pipe.execute()

    async def refund(
        self, workspace_id: str, payment_id: str, amount_micros: int, refund_id: str
    ) -> str:
        """Refund with Gate's refund id as idempotency key and metadata; a refund already
        made with it (a look-alike that ignores the key) is found by listing first."""
        intent = await self.client.v1.payment_intents.retrieve_async(payment_id)
        charge = intent.latest_charge
        charge_id = charge if isinstance(charge, str) else (charge.id if charge else "")
        for refund in await self.refunds_of(str(charge_id)):
            if (refund.get("metadata") or {}).get("gate_refund") == refund_id:
                return str(refund["id"])
        try:
            made = await self.client.v1.refunds.create_async(
                {"payment_intent": payment_id, "amount": amount_micros // 10_000,
                 "metadata": {"gate_refund": refund_id, "workspace_id": workspace_id}},
                {"idempotency_key": f"gate-refund-{workspace_id}-{refund_id}"},
            )  # fmt: skip
        except stripe.InvalidRequestError as err:
            raise PaymentError(f"Stripe refused the refund: {err}", declined=False) from err
        if made.status in ("failed", "canceled"):
            raise PaymentError(f"Stripe's refund {made.id} is {made.status}", declined=False)
        return str(made.id)

    async def refunds_of(self, charge_id: str) -> list[dict[str, Any]]:
        """The refunds of one charge, as Stripe lists them (plain dicts)."""
        try:
            page = await self.client.v1.refunds.list_async({"charge": charge_id, "limit": 100})
        except stripe.InvalidRequestError:  # a look-alike without the charge filter
            page = await self.client.v1.refunds.list_async({"limit": 100})
        found = []
        async for refund in page.auto_paging_iter():
            if refund.charge == charge_id:
                found.append(refund.to_dict())
        return found

    async def _find(self, workspace_id: str, customer: str, key: str) -> PaymentIntent | None:
        """The PaymentIntent Gate created with this key, by its metadata (listing: Stripe's
        search lags by up to a minute, and Stripe look-alikes have none)."""
        try:
            page = await self.client.v1.payment_intents.list_async(
                {"customer": customer, "limit": 100}
            )
        except stripe.InvalidRequestError:  # a look-alike without the customer filter
            page = await self.client.v1.payment_intents.list_async({"limit": 100})
        async for intent in page.auto_paging_iter():
            meta = intent.metadata.to_dict() if intent.metadata else {}
            if meta.get("gate_key") == key and meta.get("workspace_id") == workspace_id:
                return intent
        return None

    @staticmethod
    def _intent(
        customer: str, method: str, micros: int, workspace_id: str, gate_key: str
    ) -> PaymentIntentCreateParams:
        return {
            "amount": micros // 10_000,  # cents; Gate refuses amounts below a cent
            "currency": CURRENCY,
            "customer": customer,
            "payment_method": method,
            "confirm": True,
            "off_session": True,
            "metadata": {"workspace_id": workspace_id, "gate_key": gate_key},
        }


def _decline_message(err: stripe.StripeError) -> str:
    return str(err.user_message or "Your card was declined.")

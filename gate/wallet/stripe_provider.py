"""The Stripe payment provider, with the official `stripe` package (async StripeClient).

Stripe API calls used: Customers (one per workspace, `customers.create`), PaymentMethods
(`payment_methods.retrieve`, `attach`, `detach`), off-session PaymentIntents confirmed at
once (`payment_intents.create` with `confirm`, `off_session`, the Gate idempotency key as
Stripe's `idempotency_key`, and `metadata` naming the workspace and the key), `retrieve`,
and Refunds (`refunds.create`, for the verification charge).

Gate does not rely on the provider's idempotency alone: every charge is recorded in Redis
by its Gate key (`gate:{ws}:stripe` hash: key -> PaymentIntent id) right after Stripe
answers, and a retry with the same key retrieves that PaymentIntent instead of creating a
new one. PaymentIntent ids also map back to their workspace and key (`gate:stripe:pi:<id>`),
which is how the webhook route credits a charge whose credit Gate never wrote.
"""

from __future__ import annotations

import logging

import stripe
from redis.asyncio import Redis, RedisCluster
from stripe.params import PaymentIntentCreateParams

from gate.store import keys
from gate.store.redis_client import text
from gate.tenancy.directory import member
from gate.wallet.payments import VERIFY_MICROS, MethodInfo, Payment, PaymentError

log = logging.getLogger("gate.wallet.stripe")

RECORD_TTL_S = 90 * 86400  # how long a charge's key and PaymentIntent records are kept


def pi_key(payment_intent_id: str) -> str:
    """Global record of one PaymentIntent: "<workspace>|<gate key>|<micros>|<method>"."""
    return f"{keys.PREFIX}:stripe:pi:{payment_intent_id}"


class StripeProvider:
    def __init__(
        self, redis: Redis | RedisCluster, api_key: str, api_base: str | None = None
    ) -> None:
        self.redis = redis
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
            await self.client.v1.refunds.create_async({"payment_intent": intent.id})
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

    async def detach(self, workspace_id: str, payment_method_id: str) -> None:
        try:
            await self.client.v1.payment_methods.detach_async(payment_method_id)
        except stripe.StripeError as err:
            raise PaymentError(str(err), declined=False) from err

    async def charge(
        self, workspace_id: str, payment_method_id: str, amount_micros: int, idempotency_key: str
    ) -> Payment:
        records = self._records(workspace_id)
        known = await self.redis.hget(records, f"key:{idempotency_key}")
        if known:
            intent = await self.client.v1.payment_intents.retrieve_async(text(known))
            if intent.status == "succeeded":
                return Payment(str(intent.id), amount_micros, payment_method_id)
        customer = await self._customer(workspace_id)
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
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(records, f"key:{idempotency_key}", intent.id)
            pipe.set(
                pi_key(intent.id),
                f"{workspace_id}|{idempotency_key}|{amount_micros}|{payment_method_id}",
                ex=RECORD_TTL_S,
            )
            await pipe.execute()
        if intent.status != "succeeded":
            raise PaymentError(
                f"the charge needs the cardholder (status {intent.status}); top up by hand",
                declined=True,
            )
        return Payment(str(intent.id), amount_micros, payment_method_id)

    @staticmethod
    def _intent(
        customer: str, method: str, micros: int, workspace_id: str, gate_key: str
    ) -> PaymentIntentCreateParams:
        return {
            "amount": micros // 10_000,  # cents; Gate refuses amounts below a cent
            "currency": "usd",
            "customer": customer,
            "payment_method": method,
            "confirm": True,
            "off_session": True,
            "metadata": {"workspace_id": workspace_id, "gate_key": gate_key},
        }


def _decline_message(err: stripe.StripeError) -> str:
    return str(err.user_message or "Your card was declined.")

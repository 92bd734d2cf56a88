"""Payment providers behind one small interface, and the sandbox provider for development.

The sandbox mimics Stripe's test payment methods: `pm_card_visa` (and other
`pm_card_*` success methods) charge, `pm_card_chargeDeclined` declines, anything else is an
unknown method. Charges are idempotent by key, as real providers' are, so a retried top-up
after a crash never charges twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    amount_micros: int
    payment_method_id: str


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """What the provider says about a card (None where it says nothing)."""

    id: str
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None


VERIFY_MICROS = 500_000  # the verification charge, refunded at once (seed 004: "$0.50")


class PaymentError(Exception):
    """The provider refused; `declined` tells a card decline from an unusable method."""

    def __init__(self, message: str, *, declined: bool) -> None:
        super().__init__(message)
        self.declined = declined


class PaymentProvider(Protocol):
    async def check_method(self, workspace_id: str, payment_method_id: str) -> None:
        """Raise PaymentError(declined=False) when the method cannot be charged at all."""

    async def charge(
        self, workspace_id: str, payment_method_id: str, amount_micros: int, idempotency_key: str
    ) -> Payment:
        """Charge the method once per idempotency key; raise PaymentError when refused."""

    async def verify(self, workspace_id: str, payment_method_id: str) -> MethodInfo:
        """Attach the method to the workspace after a small charge refunded at once;
        raise PaymentError (declined=True) when the card is refused."""

    async def detach(self, workspace_id: str, payment_method_id: str) -> None:
        """Forget the method at the provider (best effort)."""

    async def refund(
        self, workspace_id: str, payment_id: str, amount_micros: int, refund_id: str
    ) -> str:
        """Refund part of a payment to its card once per `refund_id`; returns the provider's
        refund id; raise PaymentError when refused."""


SANDBOX_SUCCEEDS = {"pm_card_visa", "pm_card_mastercard", "pm_card_amex", "pm_card_us"}
SANDBOX_CARDS = {
    "pm_card_visa": ("visa", "4242"),
    "pm_card_mastercard": ("mastercard", "4444"),
    "pm_card_amex": ("amex", "8431"),
    "pm_card_us": ("visa", "4242"),
}
SANDBOX_DECLINES = {
    "pm_card_chargeDeclined",
    "pm_card_chargeDeclinedInsufficientFunds",
    "pm_card_chargeDeclinedExpiredCard",
}


class SandboxProvider:
    """A provider that charges nothing real; deterministic by idempotency key."""

    def __init__(self) -> None:
        self.charges: dict[str, Payment] = {}

    async def check_method(self, workspace_id: str, payment_method_id: str) -> None:
        if payment_method_id not in SANDBOX_SUCCEEDS | SANDBOX_DECLINES:
            raise PaymentError(
                f"unknown payment method {payment_method_id!r}; the sandbox accepts "
                "pm_card_visa (succeeds) and pm_card_chargeDeclined (declines)",
                declined=False,
            )

    async def charge(
        self, workspace_id: str, payment_method_id: str, amount_micros: int, idempotency_key: str
    ) -> Payment:
        await self.check_method(workspace_id, payment_method_id)
        if payment_method_id in SANDBOX_DECLINES:
            raise PaymentError("Your card was declined.", declined=True)
        digest = hashlib.sha256(f"{workspace_id}:{idempotency_key}".encode()).hexdigest()
        payment = Payment(f"pay_{digest[:24]}", amount_micros, payment_method_id)
        return self.charges.setdefault(payment.id, payment)

    async def verify(self, workspace_id: str, payment_method_id: str) -> MethodInfo:
        await self.check_method(workspace_id, payment_method_id)
        if payment_method_id in SANDBOX_DECLINES:
            raise PaymentError("Your card was declined.", declined=True)
        brand, last4 = SANDBOX_CARDS[payment_method_id]
        return MethodInfo(payment_method_id, brand, last4, 12, 2034)

    async def detach(self, workspace_id: str, payment_method_id: str) -> None:
        return None

    async def refund(
        self, workspace_id: str, payment_id: str, amount_micros: int, refund_id: str
    ) -> str:
        if not payment_id.startswith("pay_"):
            raise PaymentError(f"the sandbox made no payment {payment_id!r}", declined=False)
        return f"re_{hashlib.sha256(f'{workspace_id}:{refund_id}'.encode()).hexdigest()[:24]}"

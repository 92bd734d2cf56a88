"""Request bodies as msgspec Structs: they validate input and generate the OpenAPI schemas.

msgspec was chosen over pydantic because it decodes and validates JSON in one pass at several
times the speed (this is on the call-setup hot path), decodes JSON numbers into Decimal
exactly (no float ever touches money), rejects unknown fields, and emits JSON Schema.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

# JSON number or decimal string; gate.money.parse_usd checks places and range. msgspec's JSON
# Schema says "string" for Decimal, so the description says what is really accepted.
Usd = Annotated[
    Decimal,
    Meta(
        description="USD: a JSON number or a decimal string, at most 6 decimal places",
        examples=["10.50", 25],
    ),
]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@+-]+$")]
Url = Annotated[str, Meta(max_length=2048, pattern=r"^https?://[^\s]+$")]
Email = Annotated[str, Meta(max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Seconds = Annotated[int, Meta(ge=0, le=86400)]


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: unknown fields are an error, so typos never pass silently."""


class CreateWorkspace(Body):
    name: Name
    organization_id: Id | None = None


class CreateKey(Body):
    role: Literal["org_admin", "admin", "switch", "agent"]
    # When the key stops working (RFC 3339 with a zone, e.g. "2027-01-01T00:00:00Z").
    expires_at: Annotated[datetime, Meta(tz=True)] | None = None
    # The person the key is for (a platform with single sign-on mints one per session): the
    # audit log names them, and revoking the key signs out that person only.
    person: Annotated[str, Meta(min_length=1, max_length=200)] | None = None


class Topup(Body):
    amount_usd: Usd
    payment_method_id: Id | None = None  # None: the default payment method


class RefundTopup(Body):
    amount_usd: Usd | None = None  # None: what of the top-up is not refunded yet


class AddPaymentMethod(Body):
    payment_method_id: Id
    default: bool = False


class PaymentMethodPatch(Body):
    default: Literal[True]


class SetPlan(Body):
    """PUT /v1/workspaces/{id}/plan: a plan of the rate card, or null for none."""

    plan: Annotated[str, Meta(min_length=1, max_length=40)] | None
    cycle_anchor: Annotated[int, Meta(ge=1, le=31)] | None = None


class Adjustment(Body):
    amount_usd: Usd
    type: Literal["adjustment", "refund"]
    description: Annotated[str, Meta(min_length=1, max_length=500)]
    reference: Id | None = None


class AutoRecharge(Body):
    enabled: bool | UnsetType = UNSET
    threshold_usd: Usd | UnsetType = UNSET
    topup_usd: Usd | UnsetType = UNSET
    monthly_cap_usd: Usd | UnsetType = UNSET


class LowBalanceAlert(Body):
    enabled: bool | UnsetType = UNSET
    threshold_usd: Usd | UnsetType = UNSET
    # One address, or a list of up to 10 (stored comma-separated).
    email: Email | Annotated[list[Email], Meta(max_length=10)] | UnsetType | None = UNSET


class WalletSettings(Body):
    auto_recharge: AutoRecharge | UnsetType = UNSET
    low_balance_alert: LowBalanceAlert | UnsetType = UNSET
    payment_method_id: Id | UnsetType = UNSET


class WorkspacePatch(Body):
    name: Name | UnsetType = UNSET
    switch_webhook_url: Url | UnsetType | None = UNSET
    inbound_limit_threshold_usd: Usd | UnsetType | None = UNSET
    inbound_grace_s: Annotated[int, Meta(ge=0, le=3600)] | UnsetType | None = UNSET
    max_concurrent_calls: Annotated[int, Meta(ge=1, le=1000000)] | UnsetType | None = UNSET


class SetLimits(Body):
    """PUT /v1/workspaces/{id}/limits: the platform's per-workspace override of
    GATE_NEGATIVE_LIMIT_USD (money at risk below zero); null = the service default."""

    negative_limit_usd: Usd | None


class CreateOrganization(Body):
    name: Name


class SpendingAlerts(Body):
    """Monthly budget thresholds and the daily spike alert; null turns one off."""

    monthly_budget_usd: Usd | None = None
    thresholds_pct: Annotated[
        list[Annotated[int, Meta(ge=1, le=1000)]], Meta(min_length=1, max_length=10)
    ] = msgspec.field(default_factory=lambda: [50, 80, 100])
    spike_factor: Annotated[int, Meta(ge=2, le=100)] | None = None


Reason = Annotated[str, Meta(min_length=1, max_length=500)]


class Suspend(Body):
    """The platform suspends a workspace; the reason is shown to its keys' refused starts."""

    reason: Reason
    live_calls: Literal["keep", "end"] = "keep"


class Close(Body):
    """The platform closes a workspace for good (its history is kept)."""

    reason: Reason


class SigninLink(Body):
    """A one-time sign-in link for one person; the platform sends it to them."""

    person: Annotated[str, Meta(min_length=1, max_length=200)]
    role: Literal["admin", "agent"] = "admin"
    key_ttl_s: Annotated[int, Meta(ge=60, le=7 * 86400)] = 8 * 3600
    base_url: Url | None = None  # where the billing page is (default: this request's host)


class Redeem(Body):
    token: Annotated[str, Meta(min_length=1, max_length=200)]

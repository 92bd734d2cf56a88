"""One-off charges: SMS, MMS, fax pages and chat messages, priced from the card's [units].

A charge is one run of lua/charge-6.lua: it draws the plan allowance of the service, then
the commitment covering it, then universal money, and never takes a wallet below zero
(seed 004: outbound SMS stops when the credits run out); its `charge_id` makes it
idempotent. The same id with the same billed facts answers the first row; with other facts,
409. The text itself is only counted (segments, encoding), never stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gate.calls.rating import NoRate, RateCard
from gate.calls.segments import sms_segments
from gate.errors import (
    HeldByPlatform,
    IdempotencyKeyReused,
    InsufficientBalance,
    NotFound,
    ValidationFailed,
)
from gate.history import ledger
from gate.money import usd
from gate.store import keys
from gate.store.redis_client import text
from gate.store.scripts import Code
from gate.wallet.service import Wallet

# service -> the [units] price it is billed at
UNIT_OF = {"sms": "sms_segment", "mms": "mms", "fax": "fax_page", "chat": "chat_message"}
NOUN = {"sms": "SMS", "mms": "MMS", "fax": "Fax", "chat": "Chat"}
MAX_TEXT = 1600
# Fields lua/charge-6.lua adds to a charge's row: how the credit buckets paid it.
BUCKET_FIELDS = frozenset({
    "source", "wallet_source", "allowance_units", "allowance_prior_units", "universal_micros",
    "cost_micros", "commitment", "commitment_micros", "price_micros",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    charge_id: str
    service: str
    text: str | None = None
    segments: int | None = None
    pages: int | None = None
    messages: int | None = None
    direction: str = "outbound"
    from_: str | None = None
    to: str | None = None
    user: str | None = None
    group: str | None = None
    message_id: str | None = None
    status: str | None = None  # delivery status (sms, mms, chat) or fax status


@dataclass(frozen=True, slots=True)
class Priced:
    """What a charge bills: how many units, at what unit price, and the row's facts."""

    quantity: int
    unit_micros: int
    facts: tuple[tuple[str, str], ...]

    @property
    def amount_micros(self) -> int:
        return self.quantity * self.unit_micros


def price(card: RateCard, req: ChargeRequest) -> Priced:
    """Count the units of a charge and price them; ValidationFailed names a wrong field."""
    facts: list[tuple[str, str]] = []

    def only(*allowed: str) -> None:
        given = {"text": req.text, "segments": req.segments, "pages": req.pages,
                 "messages": req.messages}  # fmt: skip
        for name, value in given.items():
            if value is not None and name not in allowed:
                raise ValidationFailed(
                    f"{name} does not apply to a {req.service} charge; send "
                    + " or ".join(allowed),
                    field=name,
                )

    if req.service == "sms":
        only("text", "segments")
        if (req.text is None) == (req.segments is None):
            raise ValidationFailed("an sms charge needs text or segments (one of them)",
                                   field="text")  # fmt: skip
        if req.text is not None:
            encoding, quantity = sms_segments(req.text)
            facts += [("encoding", encoding), ("characters", str(len(req.text)))]
        else:
            assert req.segments is not None
            quantity = req.segments
        facts.append(("segments", str(quantity)))
    elif req.service == "mms":
        only("text", "messages")
        quantity = req.messages or 1
        facts.append(("messages", str(quantity)))
    elif req.service == "fax":
        only("pages")
        if req.pages is None:
            raise ValidationFailed("a fax charge needs pages", field="pages")
        quantity = req.pages
        facts.append(("pages", str(quantity)))
    else:
        only("messages")
        quantity = req.messages or 1
        facts.append(("messages", str(quantity)))
    try:
        unit = card.unit_price(UNIT_OF[req.service])
    except NoRate as err:
        raise ValidationFailed(
            f"the rate card has no [units] {UNIT_OF[req.service]} price; add it and reload",
            field="service",
        ) from err
    facts.append(("unit_price_micros", str(unit)))
    for name, value in (("direction", req.direction), ("from", req.from_), ("to", req.to),
                        ("user", req.user), ("group", req.group),
                        ("message_id", req.message_id), ("status", req.status)):  # fmt: skip
        if value:
            facts.append((name, value))
    return Priced(quantity, unit, tuple(facts))


def _description(req: ChargeRequest, priced: Priced) -> str:
    what = {"sms": "segment", "mms": "message", "fax": "page", "chat": "message"}[req.service]
    plural = "" if priced.quantity == 1 else "s"
    party = req.to if req.direction == "outbound" else req.from_
    where = f" {'to' if req.direction == 'outbound' else 'from'} {party}" if party else ""
    return f"{NOUN[req.service]} {req.direction}{where}, {priced.quantity} {what}{plural}"


class Charges:
    """Bills one-off usage through the wallet's post, once per charge_id."""

    def __init__(self, wallet: Wallet, card: Callable[[], RateCard]) -> None:
        self.wallet = wallet
        self.card = card

    async def charge(self, workspace_id: str, req: ChargeRequest) -> tuple[ledger.Row, bool]:
        """Post the charge; returns its ledger row and whether it is new."""
        priced = price(self.card(), req)
        ctx = self.wallet.ctx
        k = keys.for_workspace(workspace_id)
        description = _description(req, priced)
        args: list[str | int] = [
            ctx.clock.now_ms(), req.service, priced.quantity, priced.unit_micros, description,
            req.charge_id,
        ]  # fmt: skip
        for name, value in priced.facts:
            args += [name, value]
        reply = await ctx.scripts.call(
            "charge", [k.ws, k.wallet, k.live, k.ledger, k.events, k.refs], args
        )
        code = Code(reply[0])
        if code == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        if code == Code.HELD:
            raise HeldByPlatform(text(reply[1]), text(reply[2]))
        if code == Code.INSUFFICIENT:
            balance, reserved, money = int(reply[1]), int(reply[2]), int(reply[3])
            raise InsufficientBalance(
                "Wallet balance below the cost of this charge",
                balance_usd=usd(balance),
                required_usd=usd(money),
                available_usd=usd(balance - reserved),
            )
        row_id = text(reply[1])
        if code == Code.IDEMPOTENCY_KEY_REUSED:
            raise _reused(req.charge_id, row_id)
        row = await self.wallet.row(workspace_id, row_id)
        billed = {n: v for n, v in row.extra.items() if n not in BUCKET_FIELDS}
        if code == Code.REPEAT and billed != dict(priced.facts):
            raise _reused(req.charge_id, row_id)
        if code == Code.OK:
            ctx.notifier.events(workspace_id)
        return row, code == Code.OK


def _reused(charge_id: str, row_id: str) -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        f"charge_id {charge_id!r} was billed before with other facts (ledger row {row_id}); "
        "send a new charge_id for a new charge",
        transaction_id=row_id,
    )

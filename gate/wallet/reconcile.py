"""Credit a provider payment that Gate charged but never credited (provider webhooks).

A top-up or an auto-recharge whose charge succeeded while Gate died before the credit is
found again by its payment id: the provider's `payment_intent.succeeded` webhook names it,
and this module credits it through the same scripts as the normal path, once per payment id
(a later retry of the top-up with its Idempotency-Key finds the row and answers it).

Money the provider takes back is booked here too: a dispute debits the disputed amount
(`dispute` row, `dispute:<id>`), a won dispute credits it again (`dispute_won:<id>`), and a
refund made at the provider debits it (`refund` row, `card_refund:<refund id>`), each once
whatever the webhook's retries.
"""

from __future__ import annotations

from dataclasses import dataclass

from gate.context import Context
from gate.store import keys
from gate.store.scripts import Code
from gate.wallet.automation import month_of
from gate.wallet.service import post


async def credit_payment(
    ctx: Context,
    workspace_id: str,
    gate_key: str,
    payment_id: str,
    amount_micros: int,
    payment_method_id: str,
) -> bool:
    """Credit the payment unless it was; returns True when this call credited it."""
    k = keys.for_workspace(workspace_id)
    now = ctx.clock.now_ms()
    auto = f"ar_{workspace_id}_"
    if gate_key.startswith(auto):
        reply = await ctx.scripts.call(
            "auto_recharge_settle",
            [k.ws, k.wallet, k.ledger, k.events, k.refs, k.cuts, k.due],
            [now, gate_key[len(auto) :], amount_micros, payment_id, month_of(now)[0],
             payment_method_id],
        )  # fmt: skip
        credited = int(reply[0]) == Code.OK
    else:
        posted = await post(
            ctx,
            workspace_id,
            now_ms=now,
            amount_micros=amount_micros,
            type="recharge",
            description=f"Wallet top-up ({payment_method_id})",
            reference=payment_id,
            floor="none",
            extra=[("source", "card"), ("payment_method_id", payment_method_id)],
        )
        credited = posted.code == Code.OK
    if credited:
        ctx.notifier.events(workspace_id)
        ctx.notifier.ticks(workspace_id, now)
    return credited


@dataclass(frozen=True, slots=True)
class Recorded:
    """Gate's own record of a provider payment (gate:stripe:pi:<id>, written ahead)."""

    workspace_id: str
    gate_key: str
    amount_micros: int
    payment_method_id: str
    currency: str

    @classmethod
    def parse(cls, raw: str) -> Recorded:
        workspace_id, gate_key, micros, method, *rest = raw.split("|")
        return cls(workspace_id, gate_key, int(micros), method, rest[0] if rest else "usd")


async def _post_card(
    ctx: Context, payment: Recorded, amount_micros: int, kind: str, description: str, ref: str
) -> bool:
    """One provider-driven balance change (dispute, card refund); True when new."""
    posted = await post(
        ctx,
        payment.workspace_id,
        now_ms=ctx.clock.now_ms(),
        amount_micros=amount_micros,
        type=kind,
        description=description,
        reference=ref,
        floor="none",  # the provider took the money back already: the books follow
        extra=[("source", "card"), ("payment_method_id", payment.payment_method_id)],
    )
    if posted.code == Code.OK:
        ctx.notifier.events(payment.workspace_id)
        if posted.woken:
            ctx.notifier.ticks(payment.workspace_id, ctx.clock.now_ms())
    return posted.code == Code.OK


async def dispute_opened(
    ctx: Context, payment: Recorded, payment_id: str, dispute_id: str, micros: int
) -> bool:
    """Debit the disputed amount (the wallet may go below zero); once per dispute."""
    return await _post_card(
        ctx, payment, -micros, "dispute",
        f"Card dispute {dispute_id} of payment {payment_id}", f"dispute:{dispute_id}",
    )  # fmt: skip


async def dispute_won(
    ctx: Context, payment: Recorded, payment_id: str, dispute_id: str, micros: int
) -> bool:
    """Credit back a dispute the merchant won; its debit is written first if its event never
    came (events may arrive out of order), so the two rows always pair."""
    await dispute_opened(ctx, payment, payment_id, dispute_id, micros)
    return await _post_card(
        ctx, payment, micros, "dispute",
        f"Card dispute {dispute_id} won: payment {payment_id} credited again",
        f"dispute_won:{dispute_id}",
    )  # fmt: skip


async def card_refunded(
    ctx: Context, payment: Recorded, payment_id: str, refund_id: str, micros: int
) -> bool:
    """Debit a refund made at the provider (its dashboard, say); once per refund id."""
    return await _post_card(
        ctx, payment, -micros, "refund",
        f"Refund {refund_id} of payment {payment_id} to the card", f"card_refund:{refund_id}",
    )  # fmt: skip

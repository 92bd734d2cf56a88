"""Credit a provider payment that Gate charged but never credited (provider webhooks).

A top-up or an auto-recharge whose charge succeeded while Gate died before the credit is
found again by its payment id: the provider's `payment_intent.succeeded` webhook names it,
and this module credits it through the same scripts as the normal path, once per payment id
(a later retry of the top-up with its Idempotency-Key finds the row and answers it).
"""

from __future__ import annotations

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

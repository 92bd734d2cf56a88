"""HTTP handler of refunds of card top-ups to the card (gate/wallet/refunds.py)."""

from __future__ import annotations

from aiohttp import web

from gate.api.http import CTX, WALLET, decode, json, principal
from gate.api.schemas import RefundTopup
from gate.errors import ValidationFailed
from gate.money import parse_usd
from gate.tenancy.auth import Role
from gate.wallet.refunds import Refunds


async def refund_topup(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    body = await decode(request, RefundTopup)
    amount = None if body.amount_usd is None else parse_usd(body.amount_usd, "amount_usd")
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise ValidationFailed("Idempotency-Key must be 1 to 255 characters")
    workspace_id = who.workspace(request.query.get("workspace_id"))
    wallet = request.app[WALLET]
    refunds = Refunds(request.app[CTX], wallet, wallet.payments)
    row = await refunds.refund_topup(
        workspace_id,
        request.match_info["topup_id"],
        amount,
        key,
        by_platform=who.role is Role.platform,
    )
    return json(row.to_json(), 201)

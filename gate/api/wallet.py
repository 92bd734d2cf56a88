"""HTTP handlers of the wallet: balance, top-up, settings and the transaction history."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from msgspec import UNSET

from gate.api.http import CTX, RATES, WALLET, WORKSPACES, decode, json, principal, query_int
from gate.api.schemas import Topup, WalletSettings
from gate.errors import ValidationFailed
from gate.history import ledger, query
from gate.money import parse_usd
from gate.tenancy.auth import Role


async def get_wallet(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    view = await request.app[WALLET].view(who.workspace(request.query.get("workspace_id")))
    wanted = request.headers.get("If-None-Match", "")
    if wanted.strip() == "*" or view.etag in (tag.strip() for tag in wanted.split(",")):
        return web.Response(status=304, headers={"ETag": view.etag})
    per_min = request.app[RATES].typical_per_min_micros()
    return json(view.to_json(per_min), headers={"ETag": view.etag, "Cache-Control": "no-cache"})


async def topup(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    body = await decode(request, Topup)
    amount = parse_usd(body.amount_usd, "amount_usd")
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise ValidationFailed("Idempotency-Key must be 1 to 255 characters")
    workspace_id = who.workspace(request.query.get("workspace_id"))  # org_admin: any office
    row = await request.app[WALLET].topup(workspace_id, amount, body.payment_method_id, key)
    return json(row.to_json() | {"balance_usd": row.to_json()["balance_after_usd"]}, 201)


async def patch_settings(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    workspace_id = who.workspace(request.query.get("workspace_id"))  # org_admin: any office
    body = await decode(request, WalletSettings)
    wallet = request.app[WALLET]
    current = (await request.app[WORKSPACES].get(workspace_id)).raw
    fields: dict[str, str | int | None] = {}
    if body.payment_method_id is not UNSET:
        await wallet.payments_check(workspace_id, body.payment_method_id)
        fields["payment_method_id"] = body.payment_method_id
    if (ar := body.auto_recharge) is not UNSET:
        if ar.enabled is not UNSET:
            fields["ar_enabled"] = "1" if ar.enabled else "0"
        if ar.threshold_usd is not UNSET:
            fields["ar_threshold_micros"] = parse_usd(
                ar.threshold_usd, "auto_recharge.threshold_usd"
            )
        if ar.topup_usd is not UNSET:
            micros = parse_usd(ar.topup_usd, "auto_recharge.topup_usd")
            if not 1_000_000 <= micros <= 1_000_000_000:
                raise ValidationFailed(
                    "auto_recharge.topup_usd must be from 1 to 1000",
                    field="auto_recharge.topup_usd",
                )
            fields["ar_topup_micros"] = micros
    if (lb := body.low_balance_alert) is not UNSET:
        if lb.enabled is not UNSET:
            fields["lb_enabled"] = "1" if lb.enabled else "0"
        if lb.threshold_usd is not UNSET:
            fields["lb_threshold_micros"] = parse_usd(
                lb.threshold_usd, "low_balance_alert.threshold_usd"
            )
        if lb.email is not UNSET:
            fields["lb_email"] = lb.email
    merged = current | {k: str(v) for k, v in fields.items() if v is not None}
    if merged.get("ar_enabled") == "1":
        if "payment_method_id" not in merged:
            raise ValidationFailed(
                "auto-recharge needs a payment method on file: top up once or send "
                "payment_method_id",
                field="auto_recharge.enabled",
            )
        if "ar_threshold_micros" not in merged or "ar_topup_micros" not in merged:
            raise ValidationFailed(
                "auto-recharge needs threshold_usd and topup_usd", field="auto_recharge"
            )
    if merged.get("lb_enabled") == "1" and "lb_threshold_micros" not in merged:
        raise ValidationFailed(
            "low-balance alerts need threshold_usd", field="low_balance_alert.threshold_usd"
        )
    await request.app[WORKSPACES].update(workspace_id, fields)
    view = await wallet.view(workspace_id)
    per_min = request.app[RATES].typical_per_min_micros()
    return json(view.to_json(per_min), headers={"ETag": view.etag})


async def transactions(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    query.check_params(request.query, query.FILTER_PARAMS + query.PAGE_PARAMS)
    workspace_id = who.workspace(request.query.get("workspace_id"))
    await request.app[WORKSPACES].get(workspace_id)
    limit = query_int(request, "limit", 50, 1, 200)
    cursor = request.query.get("cursor")
    if cursor is not None:
        cursor = ledger.check_cursor(cursor)
    ctx = request.app[CTX]
    rows, next_cursor = await ledger.page(
        ctx.client, workspace_id, query.filters(request.query), limit, cursor, ctx.archive
    )
    return json({"data": [r.to_json() for r in rows], "next_cursor": next_cursor})


async def export(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    query.check_params(request.query, query.FILTER_PARAMS)
    workspace_id = who.workspace(request.query.get("workspace_id"))
    await request.app[WORKSPACES].get(workspace_id)
    filters = query.filters(request.query)
    today = datetime.fromtimestamp(request.app[CTX].clock.now_ms() / 1000, UTC).date()
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="usage-history-{today}.csv"',
        }
    )
    await response.prepare(request)
    ctx = request.app[CTX]
    async for chunk in ledger.csv_chunks(ctx.client, workspace_id, filters, ctx.archive):
        await response.write(chunk.encode())
    await response.write_eof()
    return response

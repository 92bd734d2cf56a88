"""HTTP handlers of the wallet: balance, top-up, settings and the transaction history."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from aiohttp import web
from msgspec import UNSET

from gate.api.http import (
    AUTOMATION,
    CTX,
    PLANS,
    RATES,
    WALLET,
    WORKSPACES,
    actor,
    csv_download,
    decode,
    json,
    principal,
    query_int,
)
from gate.api.schemas import Topup, WalletSettings
from gate.errors import NotFound, Unavailable, ValidationFailed
from gate.history import details, ledger, query
from gate.history.summary import monthly
from gate.history.summary import to_csv as summary_csv
from gate.money import parse_usd
from gate.tenancy.auth import Role
from gate.wallet.service import AUTO_RECHARGE_CAP_MICROS, TOPUP_MAX_MICROS, TOPUP_MIN_MICROS

# Bounds of the automation settings: nothing a typo could turn into a runaway.
AR_THRESHOLD_MAX = 1_000_000_000  # $1,000
AR_CAP_MAX = 100_000_000_000  # $100,000 of automatic charges a month
LB_THRESHOLD_MAX = 1_000_000_000_000  # $1,000,000


def _dollars(micros: int) -> str:
    return f"{micros / 1_000_000:.2f}".removesuffix(".00")


def _bounded(value: Decimal, name: str, low: int, high: int) -> int:
    """Whole-cent USD amount within [low, high] micros, or 400 naming the field."""
    micros = parse_usd(value, name)
    if not low <= micros <= high or micros % 10_000:
        raise ValidationFailed(
            f"{name} must be from {_dollars(low)} to {_dollars(high)} USD in whole cents "
            f"(at most 2 decimal places)",
            field=name,
        )
    return micros


async def get_wallet(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    view = await request.app[WALLET].view(who.workspace(request.query.get("workspace_id")))
    wanted = request.headers.get("If-None-Match", "")
    if wanted.strip() == "*" or view.etag in (tag.strip() for tag in wanted.split(",")):
        return web.Response(status=304, headers={"ETag": view.etag})
    per_min = request.app[RATES].typical_per_min_micros()
    return json(
        view.to_json(per_min, request.app[RATES].typical_rates()),
        headers={"ETag": view.etag, "Cache-Control": "no-cache"},
    )


async def topup(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    body = await decode(request, Topup)
    amount = parse_usd(body.amount_usd, "amount_usd")
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise ValidationFailed("Idempotency-Key must be 1 to 255 characters")
    if key is not None and key.startswith("ar_"):  # the provider keys of auto-recharges
        raise ValidationFailed("an Idempotency-Key may not start with ar_; choose another key")
    workspace_id = who.workspace(request.query.get("workspace_id"))  # org_admin: any office
    method = body.payment_method_id
    if method is None:
        method = (await request.app[WORKSPACES].get(workspace_id)).payment_method_id
        if method is None:
            raise ValidationFailed(
                "no payment method on file: add one with POST /v1/wallet/payment_methods "
                "or send payment_method_id",
                field="payment_method_id",
            )
    row = await request.app[WALLET].topup(workspace_id, amount, method, key)
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
            fields["ar_threshold_micros"] = _bounded(
                ar.threshold_usd, "auto_recharge.threshold_usd", 0, AR_THRESHOLD_MAX
            )
        if ar.topup_usd is not UNSET:
            fields["ar_topup_micros"] = _bounded(
                ar.topup_usd, "auto_recharge.topup_usd", TOPUP_MIN_MICROS, TOPUP_MAX_MICROS
            )
        if ar.monthly_cap_usd is not UNSET:
            fields["ar_cap_micros"] = _bounded(
                ar.monthly_cap_usd, "auto_recharge.monthly_cap_usd", TOPUP_MIN_MICROS, AR_CAP_MAX
            )
    if (lb := body.low_balance_alert) is not UNSET:
        if lb.enabled is not UNSET:
            fields["lb_enabled"] = "1" if lb.enabled else "0"
        if lb.threshold_usd is not UNSET:
            fields["lb_threshold_micros"] = _bounded(
                lb.threshold_usd, "low_balance_alert.threshold_usd", 0, LB_THRESHOLD_MAX
            )
        if lb.email is not UNSET:
            emails = [lb.email] if isinstance(lb.email, str) else lb.email
            # None clears the addresses: an empty value removes the field.
            joined = ", ".join(dict.fromkeys(e.strip() for e in emails or []))
            fields["lb_email"] = joined or None
    kept = {k: v for k, v in current.items() if fields.get(k, "") is not None}
    merged = kept | {k: str(v) for k, v in fields.items() if v is not None}
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
        cap = int(merged.get("ar_cap_micros") or AUTO_RECHARGE_CAP_MICROS)
        if cap < int(merged["ar_topup_micros"]):
            raise ValidationFailed(
                "auto_recharge.monthly_cap_usd must be at least topup_usd, or no automatic "
                "charge could ever be made; raise the cap or lower the top-up",
                field="auto_recharge.monthly_cap_usd",
            )
    if merged.get("lb_enabled") == "1" and "lb_threshold_micros" not in merged:
        raise ValidationFailed(
            "low-balance alerts need threshold_usd", field="low_balance_alert.threshold_usd"
        )
    if merged.get("lb_enabled") == "1" and not merged.get("lb_email"):
        raise ValidationFailed(
            "low-balance alerts need an email address to write to: send low_balance_alert.email",
            field="low_balance_alert.email",
        )
    await request.app[WORKSPACES].update(
        workspace_id, fields, actor(request, who), "wallet.settings_updated"
    )
    if any(name.startswith("ar_") or name == "payment_method_id" for name in fields):
        # Enabled while already below the threshold, or a raised cap: charge now if needed.
        await request.app[AUTOMATION].look_now(workspace_id)
    view = await wallet.view(workspace_id)
    per_min = request.app[RATES].typical_per_min_micros()
    return json(
        view.to_json(per_min, request.app[RATES].typical_rates()), headers={"ETag": view.etag}
    )


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


async def transaction(request: web.Request) -> web.StreamResponse:
    """GET /v1/wallet/transactions/{row_id}: one row, still in Redis or archived."""
    who = await principal(request, Role.agent)
    query.check_params(request.query, ("workspace_id",))
    workspace_id = who.workspace(request.query.get("workspace_id"))
    await request.app[WORKSPACES].get(workspace_id)
    row_id = request.match_info["row_id"]
    if not ledger.is_row_id(row_id):
        raise NotFound("no such transaction: its id looks like 1765100000000-0, as listed by "
                       "GET /v1/wallet/transactions")  # fmt: skip
    ctx = request.app[CTX]
    row = await ledger.one(ctx.client, workspace_id, row_id, ctx.archive)
    if row is None:
        raise NotFound("no such transaction in this workspace; list them with GET "
                       "/v1/wallet/transactions")  # fmt: skip
    return json(details.of(row))


# The last line of an export that broke after its headers were sent (docs/reliability-exposure.md)
EXPORT_BROKEN = "# export incomplete:"


async def export(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    query.check_params(request.query, query.FILTER_PARAMS)
    workspace_id = who.workspace(request.query.get("workspace_id"))
    await request.app[WORKSPACES].get(workspace_id)
    filters = query.filters(request.query)
    ctx = request.app[CTX]
    if ctx.archive is not None:
        await ctx.archive.cursor(workspace_id)  # 503 archive_unavailable before any header
    response = await csv_download(request, "usage-history")
    try:
        async for chunk in ledger.csv_chunks(ctx.client, workspace_id, filters, ctx.archive):
            await response.write(chunk.encode())
    except Unavailable as err:  # too late for a status: say so in the file's last line
        await response.write(f"{EXPORT_BROKEN} {err.code}: {err.message}\n".encode())
    await response.write_eof()
    return response


async def usage_summary(request: web.Request) -> web.StreamResponse:
    """GET /v1/usage/summary?month=YYYY-MM[&format=csv]: the month's spend per service."""
    who = await principal(request, Role.agent)
    workspace_id = who.workspace(request.query.get("workspace_id"))
    await request.app[WORKSPACES].get(workspace_id)
    clock_ms = request.app[CTX].clock.now_ms()
    month = request.query.get("month") or datetime.fromtimestamp(clock_ms / 1000, UTC).strftime(
        "%Y-%m"
    )
    start, end = query.month_range(month)
    if start > clock_ms:
        raise ValidationFailed(f"month {month} has not begun; ask for this month or an earlier "
                               "one", field="month")  # fmt: skip
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ValidationFailed("format must be json or csv", field="format")
    ctx = request.app[CTX]
    summary = await monthly(ctx.client, workspace_id, month, start, end, ctx.archive)
    if start <= clock_ms < end:  # this month: the plan's buckets as they stand (seed 001)
        summary["plan"] = await request.app[PLANS].buckets(workspace_id)
    if fmt == "csv":
        return web.Response(
            text=summary_csv(summary),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="usage-summary-{month}.csv"'},
        )
    return json(summary)


async def buckets(request: web.Request) -> web.StreamResponse:
    """GET /v1/wallet/buckets: each credit bucket and the current cycle (seed 001)."""
    who = await principal(request, Role.agent)
    workspace_id = who.workspace(request.query.get("workspace_id"))
    await request.app[WORKSPACES].get(workspace_id)
    return json(await request.app[PLANS].buckets(workspace_id))

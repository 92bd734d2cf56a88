"""Workspaces of a run: created through Gate's API with a balance, keys and a webhook URL."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from loadtest.api import Answer, Api
from loadtest.books import WsBooks
from loadtest.options import AUTO_RECHARGE_THRESHOLD_USD, AUTO_RECHARGE_TOPUP_USD
from loadtest.pricing import micros
from loadtest.receiver import Receiver


class SetupError(RuntimeError):
    """Gate refused a setup step; the message names the step and Gate's answer."""


def _need(answer: Answer, what: str) -> dict[str, Any]:
    if not answer.ok:
        raise SetupError(f"{what}: HTTP {answer.status} {answer.body}")
    return answer.body


async def ledger_rows(api: Api, key: str, workspace_id: str) -> list[dict[str, Any]]:
    """Every ledger row of the workspace, paging GET /v1/wallet/transactions to the end."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        path = "/v1/wallet/transactions?limit=200" + (f"&cursor={cursor}" if cursor else "")
        page = _need(
            await api.call("transactions", "GET", path, None, key, retries=3),
            f"ledger of {workspace_id}",
        )
        rows.extend(page["data"])
        cursor = page.get("next_cursor")
        if not cursor:
            return rows


async def wallet(api: Api, key: str, workspace_id: str) -> dict[str, Any]:
    return _need(
        await api.call("wallet", "GET", "/v1/wallet", None, key, retries=3),
        f"wallet of {workspace_id}",
    )


async def create(
    api: Api,
    platform_key: str,
    receiver: Receiver | None,
    index: int,
    balance: Decimal,
    run_id: str,
    max_concurrent: int | None,
    auto_recharge: bool = False,
    plan: str | None = None,
) -> WsBooks:
    """One workspace: admin and switch keys, webhook to the receiver, opening balance."""
    created = _need(
        await api.call(
            "setup", "POST", "/v1/workspaces", {"name": f"loadtest {run_id} #{index}"},
            platform_key, retries=3,
        ),
        "create workspace",
    )  # fmt: skip
    ws_id, admin = str(created["id"]), str(created["key"])
    switch = _need(
        await api.call(
            "setup", "POST", f"/v1/workspaces/{ws_id}/keys", {"role": "switch"}, platform_key
        ),
        "create switch key",
    )
    settings = _need(
        await api.call("setup", "GET", "/v1/workspace", None, admin, retries=3),
        "read workspace",
    )
    patch: dict[str, Any] = {}
    if receiver is not None:
        patch["switch_webhook_url"] = receiver.add_workspace(ws_id, str(settings["webhook_secret"]))
    if max_concurrent is not None:
        patch["max_concurrent_calls"] = max_concurrent
    if patch:
        _need(await api.call("setup", "PATCH", "/v1/workspace", patch, admin), "set webhook URL")
    books = WsBooks(
        ws_id, admin, str(switch["key"]), grace_s=int(settings.get("inbound_grace_s") or 0)
    )
    if plan is not None:  # its plan_cycle row (amount 0) is an opening row
        assigned = _need(
            await api.call("setup", "PUT", f"/v1/workspaces/{ws_id}/plan", {"plan": plan},
                           platform_key, retries=3),
            f"assign plan {plan}",
        )  # fmt: skip
        books.plan_buckets = {str(b["name"]): b for b in assigned["buckets"]}
    # The opening balance is what the ledger holds before the harness did anything.
    for row in await ledger_rows(api, admin, ws_id):
        books.opening_rows.add(str(row["id"]))
        books.opening += int(row["amount_micros"])
    delta = micros(str(balance)) - books.opening
    if delta:
        row = _need(
            await api.call(
                "setup",
                "POST",
                f"/v1/workspaces/{ws_id}/adjustments",
                {
                    "amount_usd": str(Decimal(delta).scaleb(-6)),
                    "type": "adjustment",
                    "description": "load test opening balance",
                    "reference": f"lt-{run_id}-open-{index}",
                },
                platform_key,
                retries=3,
            ),
            "opening balance adjustment",
        )
        books.credit(str(row["id"]), int(row["amount_micros"]))
        if int(row["amount_micros"]) != delta:
            raise SetupError(f"opening adjustment of {ws_id} posted {row} for {delta} micros")
    if auto_recharge:
        # Its charges are credits the harness does not make: reconcile() checks them apart.
        _need(
            await api.call("setup", "POST", "/v1/wallet/payment_methods",
                           {"payment_method_id": "pm_card_visa"}, admin),
            "add a payment method",
        )  # fmt: skip
        auto = {"enabled": True, "threshold_usd": AUTO_RECHARGE_THRESHOLD_USD,
                "topup_usd": AUTO_RECHARGE_TOPUP_USD}  # fmt: skip
        _need(
            await api.call("setup", "PATCH", "/v1/wallet/settings", {"auto_recharge": auto}, admin),
            "turn auto-recharge on",
        )
    return books


async def create_all(
    api: Api,
    platform_key: str,
    receiver: Receiver | None,
    count: int,
    balances: tuple[Decimal, ...],
    run_id: str,
    max_concurrent: int | None = None,
    auto_recharge_share: float = 0.0,
    plan: str | None = None,
) -> list[WsBooks]:
    """`count` workspaces, ten at a time, balances cycled over them; the first
    `auto_recharge_share` of them with auto-recharge on."""
    with_auto = round(count * auto_recharge_share)
    slots = asyncio.Semaphore(10)

    async def one(i: int) -> WsBooks:
        async with slots:
            return await create(
                api, platform_key, receiver, i, balances[i % len(balances)], run_id,
                max_concurrent, i < with_auto, plan,
            )  # fmt: skip

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def settle_auto_recharges(api: Api, workspaces: list[WsBooks], timeout_s: float = 15) -> None:
    """Wait until no workspace has an automatic charge in flight, so the wallet and the
    ledger read for the reconciliation are not split by a credit landing in between."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        states = await asyncio.gather(*(wallet(api, wb.admin_key, wb.id) for wb in workspaces))
        if all(s.get("auto_recharge", {}).get("state") != "charging" for s in states):
            return
        await asyncio.sleep(0.2)


async def buckets(api: Api, key: str, workspace_id: str) -> dict[str, Any]:
    """GET /v1/wallet/buckets by name (plan_allowance services, commitments, universal)."""
    body = _need(
        await api.call("buckets", "GET", "/v1/wallet/buckets", None, key, retries=3),
        f"buckets of {workspace_id}",
    )
    return {str(b["name"]): b for b in body["buckets"]}

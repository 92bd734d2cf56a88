"""Refunds of card top-ups to the card: who may, how much, once (sandbox provider)."""

from __future__ import annotations

import asyncio
from typing import Any

from gate.api.http import AUTOMATION
from gate.clock import ManualClock
from gate.wallet.payments import SandboxProvider
from tests.conftest import PLATFORM, Client, MakeClient, auth, new_workspace
from tests.helpers import all_rows, wallet_json


async def topup(client: Client, ws: dict[str, Any], usd: int) -> dict[str, Any]:
    resp = await client.post(
        "/v1/wallet/topup",
        json={"amount_usd": usd, "payment_method_id": "pm_card_visa"},
        headers=auth(ws["key"]),
    )
    assert resp.status == 201, await resp.text()
    row: dict[str, Any] = await resp.json()
    return row


async def refund(
    client: Client,
    ws: dict[str, Any],
    row_id: str,
    body: dict[str, Any],
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    h = dict(headers or auth(ws["key"])) | ({"Idempotency-Key": key} if key else {})
    query = f"?workspace_id={ws['id']}" if headers is PLATFORM else ""
    return await client.post(f"/v1/wallet/topups/{row_id}/refund{query}", json=body, headers=h)


async def balance(client: Client, ws: dict[str, Any]) -> int:
    return int((await wallet_json(client, ws["key"]))["balance_micros"])


async def test_refund_to_the_card_once_and_never_more_than_unspent(
    client: Client, clock: ManualClock
) -> None:
    """Issue 20: no top-up could be refunded to the card."""
    ws = await new_workspace(client)
    row = await topup(client, ws, 20)
    assert await balance(client, ws) == 30_000_000
    resp = await refund(client, ws, row["id"], {"amount_usd": "5"}, key="r-1")
    assert resp.status == 201, await resp.text()
    first = await resp.json()
    assert (first["type"], first["amount_micros"]) == ("refund", -5_000_000)
    assert await balance(client, ws) == 25_000_000
    again = await refund(client, ws, row["id"], {"amount_usd": "5"}, key="r-1")
    assert again.status == 201 and (await again.json())["id"] == first["id"]
    reused = await refund(client, ws, row["id"], {"amount_usd": "6"}, key="r-1")
    assert reused.status == 409
    # More than the top-up has left (15), and more than the unspent balance:
    too_much = await refund(client, ws, row["id"], {"amount_usd": "15.01"}, key="r-2")
    assert (
        too_much.status == 400 and "not refunded yet" in (await too_much.json())["error"]["message"]
    )
    resp = await client.post(
        f"/v1/workspaces/{ws['id']}/adjustments", headers=PLATFORM,
        json={"amount_usd": "-20", "type": "adjustment", "description": "spent"},
    )  # fmt: skip
    assert resp.status == 201, await resp.text()  # $5 unspent now
    spent = await refund(client, ws, row["id"], {}, key="r-3")
    assert spent.status == 402, await spent.text()
    assert (await spent.json())["error"]["code"] == "insufficient_balance"
    assert (await refund(client, ws, row["id"], {}, key="r-3")).status == 402  # not recorded
    # Concurrent refunds of the rest: one at a time, never more than the $5 unspent.
    answers = await asyncio.gather(
        *(refund(client, ws, row["id"], {"amount_usd": "3"}, key=f"c-{i}") for i in range(4))
    )
    assert sum(a.status == 201 for a in answers) == 1
    assert all(a.status in (201, 402, 409) for a in answers)
    assert await balance(client, ws) == 2_000_000
    # An admin only within the window; the platform always.
    clock.advance(15 * 86400)
    late = await refund(client, ws, row["id"], {"amount_usd": "1"}, key="r-4")
    assert late.status == 400 and "GATE_REFUND_WINDOW_DAYS" in await late.text()
    resp = await refund(client, ws, row["id"], {"amount_usd": "1"}, key="r-4", headers=PLATFORM)
    assert resp.status == 201, await resp.text()
    refunds = [r for r in await all_rows(client, ws["key"]) if r["type"] == "refund"]
    assert sorted(r["amount_micros"] for r in refunds) == [-5_000_000, -3_000_000, -1_000_000]


async def test_only_card_topups_can_be_refunded(client: Client) -> None:
    ws = await new_workspace(client)
    signup = (await all_rows(client, ws["key"]))[0]
    resp = await refund(client, ws, signup["id"], {})
    assert resp.status == 400 and "not a card top-up" in await resp.text()
    resp = await refund(client, ws, "1800000000000-999", {})
    assert resp.status == 404


class DyingRefunds(SandboxProvider):
    """The sandbox, but the process "dies" on the first refund call, after the debit."""

    def __init__(self) -> None:
        super().__init__()
        self.refunds: list[str] = []

    async def refund(
        self, workspace_id: str, payment_id: str, amount_micros: int, refund_id: str
    ) -> str:
        self.refunds.append(refund_id)
        if len(self.refunds) == 1:
            raise RuntimeError("the process died before the provider answered")
        return await super().refund(workspace_id, payment_id, amount_micros, refund_id)


async def test_a_refund_cut_short_is_finished_by_the_recovery_pass(
    make_client: MakeClient, clock: ManualClock
) -> None:
    provider = DyingRefunds()
    client = await make_client(provider=provider)
    ws = await new_workspace(client)
    row = await topup(client, ws, 20)
    resp = await refund(client, ws, row["id"], {"amount_usd": "4"}, key="dying")
    assert resp.status == 500
    assert await balance(client, ws) == 26_000_000  # debited, the card not yet refunded
    clock.advance(31)  # the request's Idempotency-Key lease lapses
    automation = client.server.app[AUTOMATION]
    await automation.look_now(ws["id"])
    for _ in range(200):  # this test's run, or the background loop's, finishes it
        await automation.run_once()
        if not await automation.ctx.client.hlen(f"gate:{{{ws['id']}}}:pending_refunds"):
            break
        await asyncio.sleep(0.01)
    assert len(provider.refunds) == 2 and len(set(provider.refunds)) == 1, "same refund id"
    again = await refund(client, ws, row["id"], {"amount_usd": "4"}, key="dying")
    assert again.status == 201, await again.text()
    assert (await again.json())["amount_micros"] == -4_000_000
    assert await balance(client, ws) == 26_000_000
    assert len(provider.refunds) == 2


def test_the_refund_window_and_crash_point_are_checked_settings() -> None:
    import pytest

    from gate.settings import SettingsError, load

    assert load({}).refund_window_days == 14
    assert load({"GATE_REFUND_WINDOW_DAYS": "30"}).refund_window_days == 30
    with pytest.raises(SettingsError, match="GATE_REFUND_WINDOW_DAYS"):
        load({"GATE_REFUND_WINDOW_DAYS": "-1"})
    assert load({"GATE_CRASH_AT": "payment_created"}).crash_at == "payment_created"
    with pytest.raises(SettingsError, match="chaos tests only"):
        load({"GATE_CRASH_AT": "anywhere"})


async def test_a_topup_key_cannot_pose_as_an_auto_recharge(client: Client) -> None:
    """A top-up's Idempotency-Key becomes its provider key; auto-recharges use ar_<ws>_<n>,
    which the webhook settles as an auto-recharge attempt."""
    ws = await new_workspace(client)
    resp = await client.post(
        "/v1/wallet/topup",
        json={"amount_usd": 10, "payment_method_id": "pm_card_visa"},
        headers=auth(ws["key"]) | {"Idempotency-Key": f"ar_{ws['id']}_1"},
    )
    assert resp.status == 400 and "ar_" in await resp.text()
    assert await balance(client, ws) == 10_000_000

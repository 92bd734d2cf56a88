"""HTTP tests of the wallet: balance, top-ups with idempotency, settings, history."""

from __future__ import annotations

import asyncio

from tests.conftest import PLATFORM, Client, auth, new_workspace


async def test_new_workspace_has_signup_credit(client: Client) -> None:
    ws = await new_workspace(client)
    resp = await client.get("/v1/wallet", headers=auth(ws["key"]))
    assert resp.status == 200
    body = await resp.json()
    assert body["balance_usd"] == 10.0
    assert body["balance_micros"] == 10_000_000
    assert body["currency"] == "USD"
    assert body["auto_recharge"] == {
        "enabled": False,
        "threshold_usd": None,
        "topup_usd": None,
        "state": "idle",
        "last_attempt_at": None,
        "next_attempt_at": None,
        "last_error": None,
        "monthly_cap_usd": 1000.0,
        "spent_this_month_usd": 0,
    }
    assert body["low_balance_alert"]["state"] == "armed"
    assert body["available_usd"] == 10.0
    assert body["reserved_usd"] == 0
    assert body["status"] == "active"
    assert body["live_calls"] == 0
    # $10 at $0.20/min, the seed's own example; AI-agent minutes at $0.89/min
    assert body["minutes_left_estimate"] == {"voice": 50, "ai_agent": 11}
    assert body["minutes_left_at_voice_rate"] == 50  # the former single number


async def test_wallet_etag(client: Client) -> None:
    ws = await new_workspace(client)
    resp = await client.get("/v1/wallet", headers=auth(ws["key"]))
    etag = resp.headers["ETag"]
    again = await client.get("/v1/wallet", headers={**auth(ws["key"]), "If-None-Match": etag})
    assert again.status == 304
    await client.post(
        "/v1/wallet/topup",
        json={"amount_usd": 10, "payment_method_id": "pm_card_visa"},
        headers=auth(ws["key"]),
    )
    changed = await client.get("/v1/wallet", headers={**auth(ws["key"]), "If-None-Match": etag})
    assert changed.status == 200
    assert changed.headers["ETag"] != etag


async def test_topup_credits_once_per_key(client: Client) -> None:
    ws = await new_workspace(client)
    headers = {**auth(ws["key"]), "Idempotency-Key": "k1"}
    body = {"amount_usd": "25.50", "payment_method_id": "pm_card_visa"}
    first = await client.post("/v1/wallet/topup", json=body, headers=headers)
    assert first.status == 201, await first.text()
    row = await first.json()
    assert row["type"] == "recharge"
    assert row["amount_micros"] == 25_500_000
    assert row["balance_after_micros"] == 35_500_000
    again = await client.post("/v1/wallet/topup", json=body, headers=headers)
    assert again.status == 201
    assert await again.json() == row
    other = await client.post("/v1/wallet/topup", json={**body, "amount_usd": 26}, headers=headers)
    assert other.status == 409
    assert (await other.json())["error"]["code"] == "idempotency_key_reused"
    wallet = await (await client.get("/v1/wallet", headers=auth(ws["key"]))).json()
    assert wallet["balance_micros"] == 35_500_000


async def test_concurrent_replays_of_one_key_credit_once(client: Client) -> None:
    ws = await new_workspace(client)
    headers = {**auth(ws["key"]), "Idempotency-Key": "same"}
    body = {"amount_usd": 10, "payment_method_id": "pm_card_visa"}
    responses = await asyncio.gather(
        *(client.post("/v1/wallet/topup", json=body, headers=headers) for _ in range(50))
    )
    bodies = [await r.json() for r in responses]
    assert {r.status for r in responses} == {201}
    assert all(b == bodies[0] for b in bodies)
    wallet = await (await client.get("/v1/wallet", headers=auth(ws["key"]))).json()
    assert wallet["balance_micros"] == 20_000_000
    rows = await (await client.get("/v1/wallet/transactions", headers=auth(ws["key"]))).json()
    assert [r["type"] for r in rows["data"]] == ["recharge", "adjustment"]


async def test_concurrent_distinct_topups_are_exact(client: Client) -> None:
    ws = await new_workspace(client)

    async def topup(i: int) -> int:
        resp = await client.post(
            "/v1/wallet/topup",
            json={"amount_usd": f"{1 + i % 7}.{i % 100:02d}", "payment_method_id": "pm_card_visa"},
            headers={**auth(ws["key"]), "Idempotency-Key": f"t{i}"},
        )
        assert resp.status == 201, await resp.text()
        return int((await resp.json())["amount_micros"])

    amounts = await asyncio.gather(*(topup(i) for i in range(220)))
    wallet = await (await client.get("/v1/wallet", headers=auth(ws["key"]))).json()
    assert wallet["balance_micros"] == 10_000_000 + sum(amounts)
    # The client fixture runs `gate check` logic afterwards: ledger sum and running balances.


async def test_declined_card_is_replayed_not_recharged(client: Client) -> None:
    ws = await new_workspace(client)
    headers = {**auth(ws["key"]), "Idempotency-Key": "d1"}
    body = {"amount_usd": 10, "payment_method_id": "pm_card_chargeDeclined"}
    first = await client.post("/v1/wallet/topup", json=body, headers=headers)
    assert first.status == 402
    assert (await first.json())["error"]["code"] == "payment_declined"
    again = await client.post("/v1/wallet/topup", json=body, headers=headers)
    assert again.status == 402
    wallet = await (await client.get("/v1/wallet", headers=auth(ws["key"]))).json()
    assert wallet["balance_micros"] == 10_000_000


async def test_adjustments_are_platform_only(client: Client) -> None:
    ws = await new_workspace(client)
    body = {"amount_usd": "-2.5", "type": "adjustment", "description": "goodwill reversal"}
    own = await client.post(
        f"/v1/workspaces/{ws['id']}/adjustments", json=body, headers=auth(ws["key"])
    )
    assert own.status == 403
    resp = await client.post(f"/v1/workspaces/{ws['id']}/adjustments", json=body, headers=PLATFORM)
    assert resp.status == 201
    row = await resp.json()
    assert row["amount_micros"] == -2_500_000
    assert row["balance_after_micros"] == 7_500_000
    refund = await client.post(
        f"/v1/workspaces/{ws['id']}/adjustments",
        json={"amount_usd": 1, "type": "refund", "description": "dropped call", "reference": "r1"},
        headers=PLATFORM,
    )
    assert refund.status == 201
    replay = await client.post(
        f"/v1/workspaces/{ws['id']}/adjustments",
        json={"amount_usd": 1, "type": "refund", "description": "dropped call", "reference": "r1"},
        headers=PLATFORM,
    )
    assert replay.status == 200
    assert (await replay.json())["id"] == (await refund.json())["id"]
    too_much = await client.post(
        f"/v1/workspaces/{ws['id']}/adjustments",
        json={"amount_usd": -100, "type": "adjustment", "description": "x"},
        headers=PLATFORM,
    )
    assert too_much.status == 402
    assert (await too_much.json())["error"]["code"] == "insufficient_balance"


async def test_transactions_pages_newest_first(client: Client) -> None:
    ws = await new_workspace(client)
    for i in range(5):
        resp = await client.post(
            "/v1/wallet/topup",
            json={"amount_usd": i + 1, "payment_method_id": "pm_card_visa"},
            headers=auth(ws["key"]),
        )
        assert resp.status == 201
    seen: list[int] = []
    cursor = None
    while True:
        url = "/v1/wallet/transactions?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=auth(ws["key"]))).json()
        seen += [r["amount_micros"] for r in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [5_000_000, 4_000_000, 3_000_000, 2_000_000, 1_000_000, 10_000_000]
    only = await client.get("/v1/wallet/transactions?type=adjustment", headers=auth(ws["key"]))
    assert [r["type"] for r in (await only.json())["data"]] == ["adjustment"]
    bad = await client.get("/v1/wallet/transactions?cursor=nope", headers=auth(ws["key"]))
    assert bad.status == 400
    assert (await bad.json())["error"]["code"] == "invalid_cursor"

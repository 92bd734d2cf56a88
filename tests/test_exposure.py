"""Money at risk below zero is bounded: the negative limit over every live call's grace
(issue 21 item 1), and a wallet with nothing left to risk is suspended at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from gate.clock import ManualClock
from gate.store import keys
from tests.conftest import PLATFORM, Client, MakeClient, auth, new_switch_key, new_workspace
from tests.helpers import adjust

LIMIT_MICROS = 5_000_000  # GATE_NEGATIVE_LIMIT_USD's default
CARD_6_6 = """
currency = "USD"
[[rates]]
service = "voice"
prefix = ""
components = { voice = "0.20" }
increment = "6/6"
"""


def inbound(call_id: str) -> dict[str, Any]:
    return {"call_id": call_id, "direction": "inbound", "from": "+14155550100",
            "to": "+14155550123"}  # fmt: skip


async def empty_workspace(client: Client, balance_usd: str = "0") -> tuple[dict[str, Any], str]:
    """A workspace with grace 60 s and `balance_usd` left of its $10 signup credit."""
    ws = await new_workspace(client)
    await client.patch("/v1/workspace", json={"inbound_grace_s": 60}, headers=auth(ws["key"]))
    await adjust(client, ws, str(float(balance_usd) - 10))
    return ws, await new_switch_key(client, ws["id"])


async def start_many(client: Client, sw: str, n: int) -> list[Any]:
    async def one(i: int) -> Any:
        resp = await client.post("/v1/calls", json=inbound(f"in{i}"), headers=auth(sw))
        return resp.status, await resp.json()

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_200_inbound_calls_on_an_empty_wallet_stay_within_the_limit(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    ws, sw = await empty_workspace(client)
    answers = await start_many(client, sw, 200)
    allowed = [body for status, body in answers if status == 201]
    refused = [body for status, body in answers if status != 201]
    # $0.20/min, 60/6: a minute of grace costs $0.20; $5 holds 25 of them
    assert len(allowed) == 25, [s for s, _ in answers]
    assert {b["error"]["code"] for b in refused} == {"workspace_suspended"}
    wallet = await (await client.get("/v1/wallet", headers=auth(ws["key"]))).json()
    assert wallet["status"] == "suspended"
    k = keys.for_workspace(ws["id"])
    assert int(await redis.hget(k.wallet, "exposure") or 0) <= LIMIT_MICROS
    # every allowed call runs to its very end: the wallet stays within the limit
    clock.advance(max(b["max_duration_s"] for b in allowed) + 1)
    for body in allowed:
        end = await client.post(
            f"/v1/calls/{body['call_id']}/end",
            json={"duration_s": body["max_duration_s"]},
            headers=auth(sw),
        )
        assert end.status == 200, await end.text()
    wallet = await (await client.get("/v1/wallet", headers=auth(ws["key"]))).json()
    assert -LIMIT_MICROS <= wallet["balance_micros"] < 0
    assert int(await redis.hget(k.wallet, "exposure") or 0) == 0


async def test_the_last_call_gets_the_grace_that_fits(
    make_client: MakeClient, tmp_path: Path
) -> None:
    card = tmp_path / "rates.toml"
    card.write_text(CARD_6_6)
    client = await make_client(rates=str(card))
    ws, sw = await empty_workspace(client)
    limit = {"negative_limit_usd": "0.30"}
    await client.put(f"/v1/workspaces/{ws['id']}/limits", json=limit, headers=PLATFORM)
    first = await client.post("/v1/calls", json=inbound("a"), headers=auth(sw))
    assert (await first.json())["max_duration_s"] == 60  # $0.20 of its $0.30
    second = await client.post("/v1/calls", json=inbound("b"), headers=auth(sw))
    assert second.status == 201
    assert (await second.json())["max_duration_s"] == 30  # the $0.10 left pays 30 s
    third = await client.post("/v1/calls", json=inbound("c"), headers=auth(sw))
    assert (await third.json())["error"]["code"] == "workspace_suspended"
    for call_id in "abc":
        await client.post(f"/v1/calls/{call_id}/end", json={"duration_s": 0}, headers=auth(sw))


async def test_a_cent_is_suspended_at_once_when_the_grace_is_used_up(client: Client) -> None:
    ws, sw = await empty_workspace(client, "0.01")
    answers = await start_many(client, sw, 30)
    assert sum(1 for status, _ in answers if status == 201) == 25
    resp = await client.post("/v1/calls", json=inbound("late"), headers=auth(sw))
    assert resp.status == 402
    assert (await resp.json())["error"]["code"] == "workspace_suspended"
    wallet = await (await client.get("/v1/wallet", headers=auth(ws["key"]))).json()
    assert (wallet["status"], wallet["balance_micros"]) == ("suspended", 10_000)
    for i in range(30):
        await client.post(f"/v1/calls/in{i}/end", json={"duration_s": 0}, headers=auth(sw))
    await client.post("/v1/calls/late/end", json={"duration_s": 0}, headers=auth(sw))


async def test_the_platform_sets_a_workspace_s_limit(client: Client) -> None:
    ws, sw = await empty_workspace(client)
    path = f"/v1/workspaces/{ws['id']}/limits"
    own = await client.put(path, json={"negative_limit_usd": 100}, headers=auth(ws["key"]))
    assert own.status == 403  # a workspace never raises its own credit line
    resp = await client.put(path, json={"negative_limit_usd": "1.00"}, headers=PLATFORM)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["negative_limit_micros"] == 1_000_000
    answers = await start_many(client, sw, 10)
    assert sum(1 for status, _ in answers if status == 201) == 5
    bad = await client.put(path, json={"negative_limit_usd": "-1"}, headers=PLATFORM)
    assert bad.status == 400
    back = await client.put(path, json={"negative_limit_usd": None}, headers=PLATFORM)
    assert (await back.json())["default"] is True
    for i in range(10):
        await client.post(f"/v1/calls/in{i}/end", json={"duration_s": 0}, headers=auth(sw))

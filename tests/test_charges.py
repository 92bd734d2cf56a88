"""POST /v1/charges: SMS, MMS, fax and chat billed from the card's [units], once per charge_id,
never below zero."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import PLATFORM, Client, auth, new_switch_key, new_workspace
from tests.helpers import all_rows, snapshot, wallet_json
from tests.test_calls import set_balance


async def setup(client: Client) -> tuple[dict[str, Any], dict[str, str]]:
    ws = await new_workspace(client)
    return ws, auth(await new_switch_key(client, ws["id"]))


async def charge(client: Client, sw: dict[str, str], **body: Any) -> Any:
    return await client.post("/v1/charges", json=body, headers=sw)


async def test_an_sms_is_billed_per_segment_and_says_how_it_was_counted(client: Client) -> None:
    ws, sw = await setup(client)
    resp = await charge(client, sw, charge_id="m1", service="sms", text="x" * 161,
                        to="+14155550123", user="alice", message_id="SM123")  # fmt: skip
    assert resp.status == 201, await resp.text()
    row = await resp.json()
    assert row["type"] == "sms" and row["amount_micros"] == -2 * 7900
    assert row["segments"] == 2 and row["encoding"] == "gsm7" and row["characters"] == 161
    assert row["message_id"] == "SM123" and row["user"] == "alice"
    assert row["description"] == "SMS outbound to +14155550123, 2 segments"
    emoji = await charge(client, sw, charge_id="m2", service="sms", text="hi 👋")
    assert (await emoji.json())["encoding"] == "ucs2"
    assert (await wallet_json(client, ws["key"]))["balance_usd"] == 10 - 3 * 0.0079


@pytest.mark.parametrize(
    ("body", "micros"),
    [
        ({"service": "fax", "pages": 3}, 3 * 70_000),
        ({"service": "chat", "messages": 2}, 2 * 10_000),
        ({"service": "mms"}, 20_000),
        ({"service": "sms", "segments": 4}, 4 * 7_900),
    ],
)
async def test_each_service_is_priced_from_the_card(
    client: Client, body: dict[str, Any], micros: int
) -> None:
    _, sw = await setup(client)
    resp = await charge(client, sw, charge_id="c1", **body)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["amount_micros"] == -micros


async def test_a_charge_id_bills_once_and_another_body_under_it_is_409(client: Client) -> None:
    ws, sw = await setup(client)
    first = await charge(client, sw, charge_id="m1", service="sms", text="hello")
    again = await charge(client, sw, charge_id="m1", service="sms", text="hello")
    assert (first.status, again.status) == (201, 200)
    assert (await first.json())["id"] == (await again.json())["id"]
    for other in ({"text": "hello!"}, {"segments": 1}, {"text": "hello", "to": "+14155550123"}):
        resp = await charge(client, sw, charge_id="m1", service="sms", **other)
        assert resp.status == 409, other
        assert (await resp.json())["error"]["code"] == "idempotency_key_reused"
    # A charge id lives apart from payment and adjustment references.
    adj = await client.post(f"/v1/workspaces/{ws['id']}/adjustments", headers=PLATFORM,
                            json={"amount_usd": "1", "type": "adjustment",
                                  "description": "x", "reference": "m2"})  # fmt: skip
    assert adj.status == 201
    assert (await charge(client, sw, charge_id="m2", service="chat")).status == 201
    assert len(await all_rows(client, ws["key"], "service=messaging")) == 2


async def test_a_charge_never_takes_the_wallet_below_zero(client: Client, redis: Any) -> None:
    ws, sw = await setup(client)
    await set_balance(client, ws, 10_000)  # one cent: one segment fits, two do not
    before = await snapshot(redis, ws["id"])
    resp = await charge(client, sw, charge_id="m1", service="sms", segments=2)
    assert resp.status == 402
    err = (await resp.json())["error"]
    assert err["code"] == "insufficient_balance" and err["required_usd"] == 0.0158
    assert await snapshot(redis, ws["id"]) == before
    assert (await charge(client, sw, charge_id="m2", service="sms", segments=1)).status == 201


async def test_200_concurrent_charges_on_one_wallet_never_overdraw(client: Client) -> None:
    ws, sw = await setup(client)
    await set_balance(client, ws, 1_000_000)  # $1 at $0.0079: 126 segments fit
    results = await asyncio.gather(
        *(charge(client, sw, charge_id=f"m{i}", service="sms", segments=1) for i in range(200))
    )
    statuses = [r.status for r in results]
    assert statuses.count(201) == 126 and statuses.count(402) == 74
    view = await wallet_json(client, ws["key"])
    assert view["balance_usd"] == pytest.approx(1 - 126 * 0.0079)
    assert len(await all_rows(client, ws["key"], "type=sms")) == 126


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"service": "sms"}, "text"),
        ({"service": "sms", "text": "a", "segments": 1}, "text"),
        ({"service": "sms", "text": "a" * 1601}, None),
        ({"service": "sms", "segments": 0}, None),
        ({"service": "fax"}, "pages"),
        ({"service": "fax", "pages": 1, "text": "x"}, "text"),
        ({"service": "chat", "pages": 2}, "pages"),
        ({"service": "voice", "segments": 1}, None),
        ({"service": "fax", "pages": 10**6}, None),
    ],
)
async def test_bad_charges_are_400_and_change_nothing(
    client: Client, redis: Any, body: dict[str, Any], field: str | None
) -> None:
    ws, sw = await setup(client)
    before = await snapshot(redis, ws["id"])
    resp = await charge(client, sw, charge_id="bad", **body)
    assert resp.status == 400, await resp.text()
    if field:
        assert (await resp.json())["error"]["field"] == field
    assert await snapshot(redis, ws["id"]) == before


async def test_only_the_switch_charges(client: Client) -> None:
    ws, _ = await setup(client)
    for key in (auth(ws["key"]), PLATFORM):
        resp = await client.post("/v1/charges", json={"charge_id": "m", "service": "chat"},
                                 headers=key)  # fmt: skip
        assert resp.status == 403

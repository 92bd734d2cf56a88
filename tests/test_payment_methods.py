"""Payment methods on file: verification charge, list, default, delete; top-up by default."""

from __future__ import annotations

from redis.asyncio import Redis

from gate.wallet.methods import methods_key
from tests.conftest import Client, auth, new_workspace
from tests.helpers import wallet_json


async def test_add_list_default_delete(client: Client) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    path = "/v1/wallet/payment_methods"
    resp = await client.post(path, json={"payment_method_id": "pm_card_visa"}, headers=admin)
    assert resp.status == 201, await resp.text()
    visa = await resp.json()
    assert visa["brand"] == "visa"
    assert visa["last4"] == "4242"
    assert visa["exp_year"] == 2034
    assert visa["default"] is True  # the first method becomes the default
    resp = await client.post(path, json={"payment_method_id": "pm_card_mastercard"}, headers=admin)
    assert (await resp.json())["default"] is False
    listed = await (await client.get(path, headers=admin)).json()
    assert [m["id"] for m in listed["data"]] == ["pm_card_visa", "pm_card_mastercard"]
    assert listed["default_payment_method_id"] == "pm_card_visa"

    resp = await client.patch(f"{path}/pm_card_mastercard", json={"default": True}, headers=admin)
    assert resp.status == 200, await resp.text()
    # A top-up without payment_method_id charges the default.
    resp = await client.post("/v1/wallet/topup", json={"amount_usd": 10}, headers=admin)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["payment_method_id"] == "pm_card_mastercard"

    resp = await client.delete(f"{path}/pm_card_mastercard", headers=admin)
    assert resp.status == 204
    listed = await (await client.get(path, headers=admin)).json()
    assert listed["default_payment_method_id"] == "pm_card_visa"
    assert [m["default"] for m in listed["data"]] == [True]


async def test_declined_verification_stores_nothing(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    resp = await client.post(
        "/v1/wallet/payment_methods",
        json={"payment_method_id": "pm_card_chargeDeclined"},
        headers=admin,
    )
    assert resp.status == 402
    error = (await resp.json())["error"]
    assert error["code"] == "payment_declined"
    assert "another card" in error["message"]
    assert await redis.hlen(methods_key(ws["id"])) == 0
    assert (await wallet_json(client, ws["key"]))["payment_method_id"] is None
    unknown = await client.post(
        "/v1/wallet/payment_methods", json={"payment_method_id": "pm_bogus"}, headers=admin
    )
    assert unknown.status == 400
    assert (await unknown.json())["error"]["field"] == "payment_method_id"


async def test_topup_rules(client: Client) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    resp = await client.post("/v1/wallet/topup", json={"amount_usd": 10}, headers=admin)
    assert resp.status == 400
    assert "POST /v1/wallet/payment_methods" in (await resp.json())["error"]["message"]
    resp = await client.post(
        "/v1/wallet/topup",
        json={"amount_usd": "10.001", "payment_method_id": "pm_card_visa"},
        headers=admin,
    )
    assert resp.status == 400
    assert "2 decimal places" in (await resp.json())["error"]["message"]
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 10_000_000


async def test_last_method_cannot_go_while_auto_recharge_is_on(client: Client) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    path = "/v1/wallet/payment_methods"
    resp = await client.post(path, json={"payment_method_id": "pm_card_visa"}, headers=admin)
    assert resp.status == 201
    on = {"auto_recharge": {"enabled": True, "threshold_usd": 2, "topup_usd": 10}}
    resp = await client.patch("/v1/wallet/settings", json=on, headers=admin)
    assert resp.status == 200, await resp.text()
    resp = await client.delete(f"{path}/pm_card_visa", headers=admin)
    assert resp.status == 409
    assert "turn auto-recharge off" in (await resp.json())["error"]["message"]
    missing = await client.delete(f"{path}/pm_card_amex", headers=admin)
    assert missing.status == 404
    assert (await client.patch(f"{path}/pm_card_visa", json={"default": False},
                               headers=admin)).status == 400  # fmt: skip

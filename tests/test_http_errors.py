"""Bad input on every route: the error body, the status, and that nothing changed."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from msgspec import msgpack
from redis.asyncio import Redis

from gate.api.routes import ROUTES, Route
from gate.store import keys
from tests.conftest import PLATFORM, Client, auth, new_switch_key, new_workspace
from tests.helpers import snapshot, wallet_json

BODY_ROUTES = [r for r in ROUTES if r.body is not None]
GOOD_TOPUP = {"amount_usd": 10, "payment_method_id": "pm_card_visa"}


async def error_of(resp: Any, status: int, code: str) -> dict[str, Any]:
    """The error object of a response, after checking the status and the promised shape."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    return error


async def state(client: Client, redis: Redis, ws: dict[str, Any]) -> dict[str, Any]:
    """What no bad request may change: Redis records and what the API shows."""
    snap = await snapshot(redis, ws["id"])
    snap["live"] = await redis.hlen(keys.for_workspace(ws["id"]).live)
    snap["workspaces"] = await redis.scard(keys.WORKSPACES)
    wallet = await wallet_json(client, ws["key"])
    snap["balance"] = wallet["balance_micros"]
    snap["api_ledger"] = len(
        (await (await client.get("/v1/wallet/transactions", headers=auth(ws["key"]))).json())[
            "data"
        ]
    )
    return snap


def _url(route: Route, ws: dict[str, Any]) -> str:
    return route.path.format(
        workspace_id=ws["id"], call_id="call-bad-1", method_id="pm_card_visa",
        topup_id="1800000000000-1",
    )  # fmt: skip


def _headers(route: Route, ws: dict[str, Any]) -> dict[str, str]:
    who = {"platform": PLATFORM, "switch": auth(ws.get("switch", ""))}.get(route.role or "")
    return {**(who or auth(ws["key"])), "Idempotency-Key": "bad-1"}


async def test_the_body_routes_are_the_expected_ones() -> None:
    paths = {(r.method, r.path) for r in BODY_ROUTES}
    assert ("POST", "/v1/wallet/topup") in paths
    assert ("PATCH", "/v1/workspace") in paths
    assert ("POST", "/v1/workspaces/{workspace_id}/adjustments") in paths


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_every_body_route_rejects_bad_bodies(
    client: Client, redis: Redis, route: Route
) -> None:
    ws = await new_workspace(client)
    ws["switch"] = await new_switch_key(client, ws["id"])
    before = await state(client, redis, ws)
    url, headers = _url(route, ws), _headers(route, ws)
    send = getattr(client, route.method.lower())

    big = b'{"name": "' + b"x" * (64 * 1024) + b'"}'
    resp = await send(url, data=big, headers={**headers, "Content-Type": "application/json"})
    error = await error_of(resp, 413, "payload_too_large")
    assert "65536" in error["message"]

    bad_bodies = [
        (b"{not json", "invalid_json"),
        (b"{", "invalid_json"),
        (b"{,}", "invalid_json"),
        (b"", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[]", "validation_error"),
        (b'"text"', "validation_error"),
        (b"null", "validation_error"),
        (b'{"surely_not_a_field": 1}', "validation_error"),
    ]
    for raw, code in bad_bodies:
        resp = await send(url, data=raw, headers={**headers, "Content-Type": "application/json"})
        await error_of(resp, 400, code)
    resp = await send(url, json={"surely_not_a_field": 1}, headers=headers)
    error = await error_of(resp, 400, "validation_error")
    assert "surely_not_a_field" in error["message"]

    assert await state(client, redis, ws) == before


TOPUP_BAD: list[tuple[Any, str]] = [
    ({"amount_usd": True, "payment_method_id": "pm_card_visa"}, "bool"),
    ({"amount_usd": [10], "payment_method_id": "pm_card_visa"}, "array"),
    ({"amount_usd": None, "payment_method_id": "pm_card_visa"}, "null"),
    ({"amount_usd": {"usd": 10}, "payment_method_id": "pm_card_visa"}, "object"),
    ({"amount_usd": "ten", "payment_method_id": "pm_card_visa"}, "decimal"),
    ({"amount_usd": "10.0000001", "payment_method_id": "pm_card_visa"}, "6 decimal places"),
    ({"amount_usd": 10.0000001, "payment_method_id": "pm_card_visa"}, "6 decimal places"),
    ({"amount_usd": "NaN", "payment_method_id": "pm_card_visa"}, "finite"),
    ({"amount_usd": "Infinity", "payment_method_id": "pm_card_visa"}, "finite"),
    ({"amount_usd": "-Infinity", "payment_method_id": "pm_card_visa"}, "finite"),
    ({"amount_usd": "1e400", "payment_method_id": "pm_card_visa"}, "out of range"),
    ({"amount_usd": "-10", "payment_method_id": "pm_card_visa"}, "negative"),
    ({"amount_usd": 0, "payment_method_id": "pm_card_visa"}, "from 1 to 1000"),
    ({"amount_usd": "0.99", "payment_method_id": "pm_card_visa"}, "from 1 to 1000"),
    ({"amount_usd": "1000.000001", "payment_method_id": "pm_card_visa"}, "from 1 to 1000"),
    ({"amount_usd": 5000, "payment_method_id": "pm_card_visa"}, "from 1 to 1000"),
    ({"payment_method_id": "pm_card_visa"}, "amount_usd"),
    ({"amount_usd": 10}, "payment_method_id"),
    ({"amount_usd": 10, "payment_method_id": "pm_card_unknown"}, "unknown payment method"),
    ({"amount_usd": 10, "payment_method_id": 42}, "str"),
    ({"amount_usd": 10, "payment_method_id": ""}, "length"),
    ({"amount_usd": 10, "payment_method_id": "pm card"}, "regex"),
    ({**GOOD_TOPUP, "currency": "USD"}, "currency"),
]


async def test_bad_topups_change_nothing(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client)
    headers = {**auth(ws["key"]), "Idempotency-Key": "same-key"}
    before = await state(client, redis, ws)
    for body, words in TOPUP_BAD:
        resp = await client.post("/v1/wallet/topup", json=body, headers=headers)
        error = await error_of(resp, 400, "validation_error")
        assert words in error["message"], (body, error)
    too_long = {**auth(ws["key"]), "Idempotency-Key": "k" * 256}
    resp = await client.post("/v1/wallet/topup", json=GOOD_TOPUP, headers=too_long)
    assert "Idempotency-Key" in (await error_of(resp, 400, "validation_error"))["message"]
    assert await state(client, redis, ws) == before
    # No idempotency record was left behind: the same key now takes a good request.
    good = await client.post(
        "/v1/wallet/topup", json={**GOOD_TOPUP, "amount_usd": "12.34"}, headers=headers
    )
    assert good.status == 201, await good.text()
    assert (await good.json())["balance_after_micros"] == 22_340_000
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 22_340_000


async def test_declined_card_keeps_its_answer_for_the_key(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client)
    headers = {**auth(ws["key"]), "Idempotency-Key": "declined"}
    body = {"amount_usd": 10, "payment_method_id": "pm_card_chargeDeclined"}
    first = await error_of(
        await client.post("/v1/wallet/topup", json=body, headers=headers), 402, "payment_declined"
    )
    again = await error_of(
        await client.post("/v1/wallet/topup", json=body, headers=headers), 402, "payment_declined"
    )
    assert again == first  # the replay is the first answer, word for word
    other = await client.post("/v1/wallet/topup", json=GOOD_TOPUP, headers=headers)
    await error_of(other, 409, "idempotency_key_reused")
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 10_000_000


ADJUST_BAD: list[tuple[dict[str, Any], str]] = [
    ({"amount_usd": 0, "type": "adjustment", "description": "x"}, "zero"),
    ({"amount_usd": "-0.0000001", "type": "adjustment", "description": "x"}, "6 decimal"),
    ({"amount_usd": "NaN", "type": "adjustment", "description": "x"}, "finite"),
    ({"amount_usd": "-1e400", "type": "adjustment", "description": "x"}, "out of range"),
    ({"amount_usd": True, "type": "adjustment", "description": "x"}, "bool"),
    ({"amount_usd": 1, "type": "bonus", "description": "x"}, "type"),
    ({"amount_usd": 1, "type": "refund"}, "description"),
    ({"amount_usd": 1, "type": "refund", "description": ""}, "length"),
    ({"amount_usd": 1, "type": "refund", "description": "x" * 501}, "length"),
    ({"amount_usd": 1, "type": "refund", "description": "x", "reference": "a b"}, "$.reference"),
    ({"amount_usd": 1, "type": "refund", "description": "x", "balance": 1}, "balance"),
]


async def test_bad_adjustments_change_nothing(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client)
    url = f"/v1/workspaces/{ws['id']}/adjustments"
    before = await state(client, redis, ws)
    for body, words in ADJUST_BAD:
        resp = await client.post(url, json=body, headers=PLATFORM)
        error = await error_of(resp, 400, "validation_error")
        assert words in error["message"], (body, error)
    debit = {"amount_usd": "-10.000001", "type": "adjustment", "description": "too much"}
    error = await error_of(
        await client.post(url, json=debit, headers=PLATFORM), 402, "insufficient_balance"
    )
    assert (error["balance_usd"], error["required_usd"], error["available_usd"]) == (
        10.0,
        10.000001,
        10.0,
    )
    ghost = await client.post(
        "/v1/workspaces/ws_00000000deadbeef/adjustments",
        json={"amount_usd": 1, "type": "refund", "description": "x"},
        headers=PLATFORM,
    )
    await error_of(ghost, 404, "not_found")
    assert await state(client, redis, ws) == before


async def test_unknown_route_and_method(client: Client) -> None:
    ws = await new_workspace(client)
    for path in ("/v1/nope", "/v2/wallet", "/", "/v1/wallet/topup/extra"):
        error = await error_of(await client.get(path, headers=auth(ws["key"])), 404, "not_found")
        assert path in error["message"]
    for method, path in (
        ("DELETE", "/v1/wallet"),
        ("GET", "/v1/wallet/topup"),
        ("PUT", "/v1/workspace"),
        ("POST", "/healthz"),
    ):
        resp = await client.request(method, path, headers=auth(ws["key"]))
        error = await error_of(resp, 405, "method_not_allowed")
        assert method in error["message"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "bearer test-platform-key-0123456789",
        "Bearer garbage",
        "Bearer gk_ws_00000000deadbeef_" + "A" * 32,  # well-formed, never issued
        "Bearer test-platform-key-012345678",  # the platform key minus its last character
    ],
)
async def test_missing_or_unknown_key_is_401(
    client: Client, redis: Redis, authorization: str | None
) -> None:
    ws = await new_workspace(client)
    headers = {} if authorization is None else {"Authorization": authorization}
    before = await state(client, redis, ws)
    for method, path, body in (
        ("GET", "/v1/wallet", None),
        ("POST", "/v1/wallet/topup", GOOD_TOPUP),
        ("POST", "/v1/workspaces", {"name": "x"}),
        ("GET", "/v1/wallet/transactions", None),
    ):
        resp = await client.request(method, path, json=body, headers=headers)
        await error_of(resp, 401, "unauthorized")
    # Auth comes first: a bad key with a bad body is still 401, not a hint about the schema.
    resp = await client.post("/v1/wallet/topup", data=b"{oops", headers=headers)
    await error_of(resp, 401, "unauthorized")
    assert await state(client, redis, ws) == before


async def test_weak_roles_are_403(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client)
    agent = (
        await (
            await client.post(
                f"/v1/workspaces/{ws['id']}/keys", json={"role": "agent"}, headers=auth(ws["key"])
            )
        ).json()
    )["key"]
    switch = (
        await (
            await client.post(
                f"/v1/workspaces/{ws['id']}/keys", json={"role": "switch"}, headers=PLATFORM
            )
        ).json()
    )["key"]
    before = await state(client, redis, ws)
    for key, method, path, body in (
        (agent, "POST", "/v1/wallet/topup", GOOD_TOPUP),
        (switch, "POST", "/v1/wallet/topup", GOOD_TOPUP),
        (agent, "PATCH", "/v1/wallet/settings", {}),
        (switch, "PATCH", "/v1/workspace", {"name": "x"}),
        (agent, "GET", "/v1/workspace", None),
        (agent, "GET", "/v1/usage/export", None),
        (ws["key"], "POST", "/v1/workspaces", {"name": "x"}),
        (ws["key"], "POST", "/v1/admin/rates/reload", None),
    ):
        resp = await client.request(
            method, path, json=body, headers={**auth(key), "Idempotency-Key": "w"}
        )
        error = await error_of(resp, 403, "forbidden")
        assert "role" in error["message"]
    assert await state(client, redis, ws) == before
    ok = await client.post(
        "/v1/wallet/topup", json=GOOD_TOPUP, headers={**auth(ws["key"]), "Idempotency-Key": "w"}
    )
    assert ok.status == 201


# ---------------------------------------------------------------- PATCH /v1/wallet/settings


async def test_wallet_settings_validation(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    before = await state(client, redis, ws)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"auto_recharge": {"enabled": True, "threshold_usd": 5, "topup_usd": 20}}, "payment"),
        ({"auto_recharge": {"enabled": True}, "payment_method_id": "pm_card_visa"}, "threshold"),
        (
            {
                "auto_recharge": {"enabled": True, "threshold_usd": 5},
                "payment_method_id": "pm_card_visa",
            },
            "topup_usd",
        ),
        ({"auto_recharge": {"topup_usd": "0.99"}}, "from 1 to 1000"),
        ({"auto_recharge": {"topup_usd": 1000.01}}, "from 1 to 1000"),
        ({"auto_recharge": {"threshold_usd": "-1"}}, "negative"),
        ({"auto_recharge": {"threshold_usd": "NaN"}}, "finite"),
        ({"auto_recharge": {"enabled": "yes"}}, "bool"),
        ({"auto_recharge": {"enable": True}}, "enable"),
        ({"auto_recharge": True}, "object"),
        ({"low_balance_alert": {"enabled": True}}, "threshold_usd"),
        ({"low_balance_alert": {"email": "not-an-email"}}, "$.low_balance_alert.email"),
        ({"low_balance_alert": {"email": "a@b"}}, "$.low_balance_alert.email"),
        ({"low_balance_alert": {"threshold_usd": "1.0000001"}}, "6 decimal"),
        ({"payment_method_id": "pm_card_bogus"}, "unknown payment method"),
        ({"balance_usd": 100}, "balance_usd"),
    ]
    for body, words in bad:
        resp = await client.patch("/v1/wallet/settings", json=body, headers=admin)
        error = await error_of(resp, 400, "validation_error")
        assert words in error["message"], (body, error)
    assert await state(client, redis, ws) == before

    etag = (await client.get("/v1/wallet", headers=admin)).headers["ETag"]
    good = {
        "payment_method_id": "pm_card_visa",
        "auto_recharge": {"enabled": True, "threshold_usd": "5.5", "topup_usd": 25},
        "low_balance_alert": {"enabled": True, "threshold_usd": 3, "email": "ops@example.com"},
    }
    resp = await client.patch("/v1/wallet/settings", json=good, headers=admin)
    assert resp.status == 200, await resp.text()
    shown = await wallet_json(client, ws["key"])
    assert shown["auto_recharge"] | {"state": "?"} == shown["auto_recharge"] | {
        "enabled": True,
        "threshold_usd": 5.5,
        "topup_usd": 25.0,
        "state": "?",
    }
    assert shown["low_balance_alert"] == {
        "enabled": True,
        "threshold_usd": 3.0,
        "email": "ops@example.com",
        "state": "armed",
    }
    assert shown["payment_method_id"] == "pm_card_visa"
    assert await resp.json() == shown
    assert resp.headers["ETag"] != etag
    assert shown["balance_micros"] == 10_000_000  # settings are not money

    # Alerts need an address while enabled (issue 9).
    resp = await client.patch(
        "/v1/wallet/settings", json={"low_balance_alert": {"email": None}}, headers=admin
    )
    assert (await error_of(resp, 400, "validation_error"))["field"] == "low_balance_alert.email"
    # Partial updates keep the rest; null clears the email; turning things off needs nothing.
    resp = await client.patch(
        "/v1/wallet/settings",
        json={
            "auto_recharge": {"enabled": False},
            "low_balance_alert": {"enabled": False, "email": None},
        },
        headers=admin,
    )
    assert resp.status == 200
    shown = await wallet_json(client, ws["key"])
    assert shown["auto_recharge"]["enabled"] is False
    assert shown["auto_recharge"]["threshold_usd"] == 5.5
    assert shown["auto_recharge"]["topup_usd"] == 25.0
    assert shown["low_balance_alert"]["email"] is None
    assert shown["low_balance_alert"]["enabled"] is False
    resp = await client.patch("/v1/wallet/settings", json={}, headers=admin)
    assert resp.status == 200
    assert await wallet_json(client, ws["key"]) == shown


async def test_auto_recharge_accepts_the_method_of_an_earlier_topup(client: Client) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    resp = await client.post("/v1/wallet/topup", json=GOOD_TOPUP, headers=admin)
    assert resp.status == 201
    on = {"auto_recharge": {"enabled": True, "threshold_usd": 0, "topup_usd": 1000}}
    resp = await client.patch("/v1/wallet/settings", json=on, headers=admin)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["auto_recharge"]["enabled"] is True


# ---------------------------------------------------------------- PATCH /v1/workspace


async def test_workspace_patch_validation(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client, "Before")
    admin = auth(ws["key"])
    before = await state(client, redis, ws)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"switch_webhook_url": "ftp://switch.example.com/hook"}, "$.switch_webhook_url"),
        ({"switch_webhook_url": "switch.example.com"}, "$.switch_webhook_url"),
        ({"switch_webhook_url": "http://"}, "$.switch_webhook_url"),
        ({"switch_webhook_url": "https://a b"}, "$.switch_webhook_url"),
        ({"switch_webhook_url": "https://x/" + "a" * 2048}, "length"),
        ({"switch_webhook_url": 1}, "str"),
        ({"inbound_limit_threshold_usd": "-1"}, "negative"),
        ({"inbound_limit_threshold_usd": "0.0000001"}, "6 decimal"),
        ({"inbound_limit_threshold_usd": "Infinity"}, "finite"),
        ({"inbound_limit_threshold_usd": False}, "bool"),
        ({"inbound_grace_s": -1}, ">= 0"),
        ({"inbound_grace_s": 3601}, "<= 3600"),
        ({"inbound_grace_s": 1.5}, "int"),
        ({"inbound_grace_s": True}, "bool"),
        ({"max_concurrent_calls": 0}, ">= 1"),
        ({"max_concurrent_calls": 1_000_001}, "<= 1000000"),
        ({"max_concurrent_calls": "3"}, "str"),
        ({"name": ""}, "length"),
        ({"name": "   "}, "blank"),
        ({"name": "x" * 201}, "length"),
        ({"name": None}, "null"),
        ({"webhook_secret": "whsec_mine"}, "webhook_secret"),
        ({"id": "ws_0000000000000000"}, "id"),
    ]
    for body, words in bad:
        resp = await client.patch("/v1/workspace", json=body, headers=admin)
        error = await error_of(resp, 400, "validation_error")
        assert words in error["message"], (body, error)
    assert await state(client, redis, ws) == before

    shown = await (await client.get("/v1/workspace", headers=admin)).json()
    assert shown["name"] == "Before"
    assert shown["switch_webhook_url"] is None
    assert shown["inbound_grace_s"] == 30  # the service default
    secret = shown["webhook_secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) >= 24

    good = {
        "name": "After",
        "switch_webhook_url": "https://switch.example.com/gate?x=1",
        "inbound_limit_threshold_usd": "0.5",
        "inbound_grace_s": 0,
        "max_concurrent_calls": 2,
    }
    resp = await client.patch("/v1/workspace", json=good, headers=admin)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body == await (await client.get("/v1/workspace", headers=admin)).json()
    assert body["name"] == "After"
    assert body["switch_webhook_url"] == "https://switch.example.com/gate?x=1"
    assert body["inbound_limit_threshold_usd"] == 0.5
    assert body["inbound_limit_threshold_micros"] == 500_000
    assert body["inbound_grace_s"] == 0
    assert body["max_concurrent_calls"] == 2
    assert body["webhook_secret"] == secret  # unchanged by any patch

    plain_http = {"switch_webhook_url": "http://10.0.0.1:8080/hook"}
    resp = await client.patch("/v1/workspace", json=plain_http, headers=admin)
    assert (await resp.json())["switch_webhook_url"] == "http://10.0.0.1:8080/hook"
    cleared = {
        "switch_webhook_url": None,
        "inbound_limit_threshold_usd": None,
        "inbound_grace_s": None,
        "max_concurrent_calls": None,
    }
    resp = await client.patch("/v1/workspace", json=cleared, headers=admin)
    body = await resp.json()
    assert body["switch_webhook_url"] is None
    assert body["inbound_limit_threshold_usd"] is None
    assert body["inbound_grace_s"] == 30
    assert body["max_concurrent_calls"] is None
    assert body["name"] == "After"


async def test_platform_key_names_the_workspace(client: Client) -> None:
    ws = await new_workspace(client)
    resp = await client.get("/v1/wallet", headers=PLATFORM)
    await error_of(resp, 400, "validation_error")
    resp = await client.get(f"/v1/wallet?workspace_id={ws['id']}", headers=PLATFORM)
    assert (await resp.json())["balance_micros"] == 10_000_000
    for ghost in ("ws_00000000deadbeef", "*", "ws_x}:keys", "x" * 300):
        resp = await client.get("/v1/wallet", params={"workspace_id": ghost}, headers=PLATFORM)
        await error_of(resp, 404, "not_found")
        resp = await client.post(
            f"/v1/workspaces/{ghost}/keys", json={"role": "agent"}, headers=PLATFORM
        )
        await error_of(resp, 404, "not_found")
    resp = await client.patch(
        "/v1/workspace?id=ws_00000000deadbeef", json={"name": "x"}, headers=PLATFORM
    )
    await error_of(resp, 404, "not_found")
    resp = await client.patch(f"/v1/workspace?id={ws['id']}", json={"name": "P"}, headers=PLATFORM)
    assert (await resp.json())["name"] == "P"


# ---------------------------------------------------------------- GET /v1/wallet caching


async def test_wallet_etag_follows_every_change(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    k = keys.for_workspace(ws["id"])
    etag = (await client.get("/v1/wallet", headers=admin)).headers["ETag"]
    for header in (etag, f'"other", {etag}', "*"):
        resp = await client.get("/v1/wallet", headers={**admin, "If-None-Match": header})
        assert resp.status == 304, header
        assert resp.headers["ETag"] == etag
    # Call scripts move `reserved` and the live calls without a new ledger row: a poller must
    # see that too. (A live call record as lua/_call.lua keeps it, reduced to its hold.)
    await redis.hset(k.live, "call-1", msgpack.encode({"id": "call-1", "held": 200_000}))
    await redis.hincrby(k.wallet, "reserved", 200_000)
    try:
        resp = await client.get("/v1/wallet", headers={**admin, "If-None-Match": etag})
        assert resp.status == 200
        body = await resp.json()
        assert (body["reserved_micros"], body["available_micros"]) == (200_000, 9_800_000)
        assert body["live_calls"] == 1
        assert resp.headers["ETag"] != etag
    finally:
        await redis.hincrby(k.wallet, "reserved", -200_000)
        await redis.delete(k.live)
    resp = await client.get("/v1/wallet", headers={**admin, "If-None-Match": etag})
    assert resp.status == 304  # back to the same state, back to the same tag

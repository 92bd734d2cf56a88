"""Tenancy: API keys (random, shown once, stored hashed), roles, and tenant isolation."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from redis.asyncio import Redis

from gate.store import keys
from gate.tenancy.auth import hash_key
from tests.conftest import PLATFORM, Client, auth, new_workspace
from tests.helpers import all_rows, wallet_json

GHOST = "ws_00000000deadbeef"


async def make_key(client: Client, workspace_id: str, role: str, by: dict[str, str]) -> str:
    resp = await client.post(f"/v1/workspaces/{workspace_id}/keys", json={"role": role}, headers=by)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["role"] == role
    assert body["id"].startswith("key_")
    key: str = body["key"]
    return key


async def redis_values(redis: Redis, pattern: str) -> list[bytes]:
    """Every key name, field and value under `pattern`, whatever the type."""
    found: list[bytes] = []
    async for name in redis.scan_iter(match=pattern, count=1000):
        found.append(name)
        kind = (await redis.type(name)).decode()
        if kind == "string":
            found.append(await redis.get(name))
        elif kind == "hash":
            for field, value in (await redis.hgetall(name)).items():
                found += [field, value]
        elif kind == "set":
            found += list(await redis.smembers(name))
        elif kind == "zset":
            found += list(await redis.zrange(name, 0, -1))
        elif kind == "list":
            found += list(await redis.lrange(name, 0, -1))
        elif kind == "stream":
            for entry_id, fields in await redis.xrange(name):
                found.append(entry_id)
                for field, value in fields.items():
                    found += [field, value]
        else:
            raise AssertionError(f"unexpected type {kind} of {name!r}")
    return found


async def test_keys_are_random_and_stored_only_hashed(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client)
    switch = await make_key(client, ws["id"], "switch", PLATFORM)
    issued = [ws["key"], switch]
    for key in issued:
        prefix = f"gk_{ws['id']}_"
        assert key.startswith(prefix)
        secret = key[len(prefix) :]
        raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
        assert len(raw) >= 16, "at least 128 random bits"
    assert len(set(issued)) == len(issued)

    stored = await redis_values(redis, f"*{ws['id']}*")
    stored += await redis_values(redis, "gate:workspaces")
    assert stored, "the workspace's records are where the scan looks"
    for key in issued:
        secret = key.split("_", 3)[3].encode()
        assert not any(secret in value for value in stored), "a key's secret is in Redis"
        assert hash_key(key).encode() in stored  # what is stored instead
    # And the keys work, with the roles they were made with.
    assert (await client.get("/v1/wallet", headers=auth(switch))).status == 200
    resp = await client.post("/v1/wallet/topup", headers=auth(switch))
    assert resp.status == 403


async def test_many_keys_are_distinct(client: Client) -> None:
    ws = await new_workspace(client)
    made = [await make_key(client, ws["id"], "agent", auth(ws["key"])) for _ in range(20)]
    assert len(set(made)) == 20


async def test_platform_creates_workspaces(client: Client) -> None:
    resp = await client.post("/v1/organizations", json={"name": "Co"}, headers=PLATFORM)
    org_7 = (await resp.json())["id"]
    resp = await client.post(
        "/v1/workspaces", json={"name": "Org'd", "organization_id": org_7}, headers=PLATFORM
    )
    assert resp.status == 201
    body = await resp.json()
    assert body["name"] == "Org'd"
    assert body["role"] == "admin"
    assert body["id"].startswith("ws_")
    assert (await wallet_json(client, body["key"]))["balance_micros"] == 10_000_000
    shown = await (await client.get("/v1/workspace", headers=auth(body["key"]))).json()
    assert shown["organization_id"] == org_7
    for bad in ({}, {"name": ""}, {"name": "  "}, {"name": "x", "organization_id": "a b"}):
        resp = await client.post("/v1/workspaces", json=bad, headers=PLATFORM)
        assert resp.status == 400, bad


async def test_unknown_key_is_401(client: Client) -> None:
    ws = await new_workspace(client)
    forged = ws["key"][:-4] + ("AAAA" if not ws["key"].endswith("AAAA") else "BBBB")
    for key in (forged, f"gk_{GHOST}_{ws['key'].split('_', 3)[3]}", "sk_live_123"):
        resp = await client.get("/v1/wallet", headers=auth(key))
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_role_hierarchy(client: Client) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    agent = auth(await make_key(client, ws["id"], "agent", admin))
    switch = auth(await make_key(client, ws["id"], "switch", PLATFORM))
    second_admin = auth(await make_key(client, ws["id"], "admin", admin))
    topup = {"amount_usd": 10, "payment_method_id": "pm_card_visa"}

    # agent: reads the wallet and its history, nothing else
    for path in ("/v1/wallet", "/v1/wallet/transactions"):
        assert (await client.get(path, headers=agent)).status == 200
    assert (await client.post("/v1/wallet/topup", json=topup, headers=agent)).status == 403
    url = f"/v1/workspaces/{ws['id']}/keys"
    assert (await client.post(url, json={"role": "agent"}, headers=agent)).status == 403

    # switch: everything an agent may, but no keys and no money
    assert (await client.get("/v1/wallet", headers=switch)).status == 200
    assert (await client.post(url, json={"role": "agent"}, headers=switch)).status == 403
    assert (await client.post("/v1/wallet/topup", json=topup, headers=switch)).status == 403

    # admin: keys up to its own role, for its own workspace; never a switch key
    for role in ("agent", "admin"):
        await make_key(client, ws["id"], role, second_admin)
    resp = await client.post(url, json={"role": "switch"}, headers=admin)
    assert resp.status == 403, "switch keys are the platform's to issue"
    assert "platform" in (await resp.json())["error"]["message"]
    resp = await client.post(url, json={"role": "org_admin"}, headers=admin)
    assert resp.status == 403, "an admin must not mint a key stronger than its own"
    resp = await client.post(url, json={"role": "platform"}, headers=admin)
    assert resp.status == 400, "platform keys are never minted through the API"
    assert (await client.post("/v1/wallet/topup", json=topup, headers=admin)).status == 201
    assert (await client.post("/v1/workspaces", json={"name": "x"}, headers=admin)).status == 403

    # platform: any workspace role, including org_admin (for an office of an organization)
    resp = await client.post("/v1/organizations", json={"name": "Co"}, headers=PLATFORM)
    body = {"name": "Office", "organization_id": (await resp.json())["id"]}
    office = await (await client.post("/v1/workspaces", json=body, headers=PLATFORM)).json()
    org_admin = auth(await make_key(client, office["id"], "org_admin", PLATFORM))
    assert (await client.get("/v1/wallet", headers=org_admin)).status == 200
    resp = await client.post(url, json={"role": "platform"}, headers=PLATFORM)
    assert resp.status == 400
    resp = await client.post(
        f"/v1/workspaces/{GHOST}/keys", json={"role": "admin"}, headers=PLATFORM
    )
    assert resp.status == 404


async def not_found(resp: Any) -> dict[str, Any]:
    assert resp.status == 404, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert body["error"]["code"] == "not_found"
    return body


@pytest.mark.parametrize("role", ["admin", "switch", "agent"])
async def test_another_tenant_is_not_found(client: Client, redis: Redis, role: str) -> None:
    a = await new_workspace(client, "Tenant A")
    b = await new_workspace(client, "Tenant B")
    minter = PLATFORM if role == "switch" else auth(a["key"])
    key = a["key"] if role == "admin" else await make_key(client, a["id"], role, minter)
    a_key = auth(key)
    b_money = await client.post(
        "/v1/wallet/topup",
        json={"amount_usd": "77.77", "payment_method_id": "pm_card_visa"},
        headers=auth(b["key"]),
    )
    assert b_money.status == 201
    b_before = (
        await redis.hgetall(keys.for_workspace(b["id"]).keys),
        await wallet_json(client, b["key"]),
    )

    answers: dict[str, list[dict[str, Any]]] = {b["id"]: [], GHOST: []}
    for target in (b["id"], GHOST):
        probes = [
            client.post(f"/v1/workspaces/{target}/keys", json={"role": "agent"}, headers=a_key),
            client.post(
                f"/v1/workspaces/{target}/adjustments",
                json={"amount_usd": 100, "type": "adjustment", "description": "free money"},
                headers=a_key,
            ),
            client.get(f"/v1/wallet?workspace_id={target}", headers=a_key),
            client.get(f"/v1/wallet/transactions?workspace_id={target}", headers=a_key),
            client.get(f"/v1/usage/export?workspace_id={target}", headers=a_key),
            client.get(f"/v1/workspace?id={target}", headers=a_key),
            client.patch(f"/v1/workspace?id={target}", json={"name": "mine"}, headers=a_key),
        ]
        for probe in probes:
            resp = await probe
            if resp.status == 403:  # a weak role on an admin-only route: says nothing about B
                assert role != "admin"
                continue
            body = await not_found(resp)
            assert target not in str(body)
            answers[target].append(body)
    # B's answers are word for word those of a workspace that does not exist.
    assert answers[b["id"]] == answers[GHOST]
    assert len(answers[GHOST]) >= 3

    b_after = (
        await redis.hgetall(keys.for_workspace(b["id"]).keys),
        await wallet_json(client, b["key"]),
    )
    assert b_after == b_before
    # A's own views never contain B's data.
    rows = await all_rows(client, key)
    assert [r["amount_micros"] for r in rows] == [10_000_000]
    wallet = await wallet_json(client, key)
    assert wallet["balance_micros"] == 10_000_000


async def test_admin_adjusting_its_own_workspace_is_forbidden(client: Client) -> None:
    ws = await new_workspace(client)
    resp = await client.post(
        f"/v1/workspaces/{ws['id']}/adjustments",
        json={"amount_usd": 100, "type": "adjustment", "description": "free money"},
        headers=auth(ws["key"]),
    )
    assert resp.status == 403
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 10_000_000

"""Organizations: company admins (org_admin) see every office, office admins one, others none."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from gate.store import keys
from gate.store.redis_proc import RedisServer
from tests.conftest import PLATFORM, Client, auth


async def org(client: Client, name: str = "Acme Corp") -> str:
    resp = await client.post("/v1/organizations", json={"name": name}, headers=PLATFORM)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["name"] == name and body["id"].startswith("org_")
    return str(body["id"])


async def office(client: Client, organization_id: str | None, name: str) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name}
    if organization_id:
        body["organization_id"] = organization_id
    resp = await client.post("/v1/workspaces", json=body, headers=PLATFORM)
    assert resp.status == 201, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def key(client: Client, workspace_id: str, role: str, by: dict[str, str]) -> str:
    resp = await client.post(f"/v1/workspaces/{workspace_id}/keys", json={"role": role}, headers=by)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["key"])


@pytest.fixture
async def world(client: Client) -> dict[str, Any]:
    """Two companies: Acme with offices NY and SF, Globex with one office; and an org_admin."""
    acme, globex = await org(client), await org(client, "Globex")
    ny, sf = await office(client, acme, "NY"), await office(client, acme, "SF")
    gx = await office(client, globex, "Globex HQ")
    boss = await key(client, ny["id"], "org_admin", PLATFORM)
    return {"acme": acme, "globex": globex, "ny": ny, "sf": sf, "gx": gx, "boss": auth(boss)}


async def test_org_admin_sees_and_manages_every_office(
    client: Client, world: dict[str, Any]
) -> None:
    boss, ny, sf = world["boss"], world["ny"], world["sf"]
    for ws in (ny, sf):
        resp = await client.get(f"/v1/wallet?workspace_id={ws['id']}", headers=boss)
        assert resp.status == 200
        resp = await client.get(f"/v1/workspace?id={ws['id']}", headers=boss)
        assert (await resp.json())["organization_id"] == world["acme"]
    topup = {"amount_usd": 25, "payment_method_id": "pm_card_visa"}
    resp = await client.post(f"/v1/wallet/topup?workspace_id={sf['id']}", json=topup, headers=boss)
    assert resp.status == 201, await resp.text()
    resp = await client.patch(
        f"/v1/wallet/settings?workspace_id={sf['id']}",
        json={"low_balance_alert": {"enabled": True, "threshold_usd": 5, "email": "a@b.co"}},
        headers=boss,
    )
    assert resp.status == 200
    resp = await client.patch(
        f"/v1/workspace?id={sf['id']}", json={"name": "San Francisco"}, headers=boss
    )
    assert resp.status == 200
    # Keys for another office, including another org_admin; never a switch key.
    sf_admin = await key(client, sf["id"], "admin", boss)
    await key(client, sf["id"], "org_admin", boss)
    resp = await client.post(
        f"/v1/workspaces/{sf['id']}/keys", json={"role": "switch"}, headers=boss
    )
    assert resp.status == 403
    rows = await (
        await client.get(f"/v1/wallet/transactions?workspace_id={sf['id']}", headers=boss)
    ).json()
    assert [r["type"] for r in rows["data"]] == ["recharge", "adjustment"]
    # Each office keeps its own wallet (seed 004).
    wallets = await (
        await client.get(f"/v1/organizations/{world['acme']}/wallets", headers=boss)
    ).json()
    by_name = {w["name"]: w for w in wallets["data"]}
    assert set(by_name) == {"NY", "San Francisco"}
    assert by_name["San Francisco"]["balance_micros"] == 35_000_000
    assert by_name["NY"]["balance_micros"] == 10_000_000
    assert wallets["total_balance_micros"] == 45_000_000
    # The office admin of SF sees SF only.
    resp = await client.get(f"/v1/wallet?workspace_id={ny['id']}", headers=auth(sf_admin))
    assert resp.status == 404
    resp = await client.get(f"/v1/organizations/{world['acme']}/wallets", headers=auth(sf_admin))
    assert resp.status == 404  # an office key knows no organization


async def test_org_export_has_a_workspace_column_and_filter(
    client: Client, world: dict[str, Any]
) -> None:
    boss = world["boss"]
    path = f"/v1/organizations/{world['acme']}/usage/export"
    text = await (await client.get(path, headers=boss)).text()
    table = list(csv.reader(io.StringIO(text, newline="")))
    assert table[0][0] == "workspace"
    assert sorted(line[0] for line in table[1:]) == sorted([world["ny"]["id"], world["sf"]["id"]])
    one = await (await client.get(f"{path}?workspace_id={world['sf']['id']}", headers=boss)).text()
    assert [line[0] for line in list(csv.reader(io.StringIO(one)))[1:]] == [world["sf"]["id"]]
    resp = await client.get(f"{path}?workspace_id={world['gx']['id']}", headers=boss)
    assert resp.status == 404
    resp = await client.get(f"{path}?office=x", headers=boss)
    assert resp.status == 400


async def test_another_organization_is_not_found(client: Client, world: dict[str, Any]) -> None:
    boss, gx = world["boss"], world["gx"]
    for method, path in (
        ("GET", f"/v1/wallet?workspace_id={gx['id']}"),
        ("GET", f"/v1/workspace?id={gx['id']}"),
        ("GET", f"/v1/wallet/transactions?workspace_id={gx['id']}"),
        ("GET", f"/v1/usage/export?workspace_id={gx['id']}"),
        ("GET", f"/v1/organizations/{world['globex']}/wallets"),
        ("GET", f"/v1/organizations/{world['globex']}/usage/export"),
        ("GET", "/v1/organizations/org_0000000000000000/wallets"),
    ):
        resp = await client.request(method, path, headers=boss)
        assert resp.status == 404, (path, await resp.text())
        assert (await resp.json())["error"]["code"] == "not_found"
    for method, path, body in (
        ("POST", f"/v1/wallet/topup?workspace_id={gx['id']}",
         {"amount_usd": 10, "payment_method_id": "pm_card_visa"}),
        ("PATCH", f"/v1/wallet/settings?workspace_id={gx['id']}",
         {"low_balance_alert": {"enabled": False}}),
        ("PATCH", f"/v1/workspace?id={gx['id']}", {"name": "mine now"}),
        ("POST", f"/v1/workspaces/{gx['id']}/keys", {"role": "admin"}),
    ):  # fmt: skip
        resp = await client.request(method, path, json=body, headers=boss)
        assert resp.status == 404, (path, await resp.text())
    resp = await client.get(f"/v1/workspace?id={gx['id']}", headers=PLATFORM)
    assert (await resp.json())["name"] == "Globex HQ"  # untouched


async def test_who_may_make_organizations_and_org_admin_keys(
    client: Client, world: dict[str, Any]
) -> None:
    ny_admin = auth(world["ny"]["key"])
    resp = await client.post("/v1/organizations", json={"name": "x"}, headers=world["boss"])
    assert resp.status == 403
    resp = await client.post("/v1/organizations", json={"name": ""}, headers=PLATFORM)
    assert resp.status == 400
    resp = await client.post(
        f"/v1/workspaces/{world['ny']['id']}/keys", json={"role": "org_admin"}, headers=ny_admin
    )
    assert resp.status == 403  # an office admin cannot make a company admin
    # An org_admin key of a workspace outside any organization sees that workspace only.
    lone = await office(client, None, "No company")
    alone = auth(await key(client, lone["id"], "org_admin", PLATFORM))
    assert (await client.get("/v1/wallet", headers=alone)).status == 200
    resp = await client.get(f"/v1/wallet?workspace_id={world['ny']['id']}", headers=alone)
    assert resp.status == 404
    resp = await client.post(
        "/v1/workspaces", json={"name": "x", "organization_id": "org_ffffffffffffffff"},
        headers=PLATFORM,
    )  # fmt: skip
    assert resp.status == 404
    # Moving a workspace between organizations is not something a workspace key can do.
    resp = await client.patch(
        "/v1/workspace", json={"organization_id": world["globex"]}, headers=world["boss"]
    )
    assert resp.status == 400


async def test_cli_makes_organizations_and_offices_inside(
    redis_server: RedisServer, redis: Redis
) -> None:
    from tests.test_cli import clean_env, gate

    env = clean_env(GATE_REDIS_URL=redis_server.url)
    done = await asyncio.to_thread(gate, "organization", "create", "Initech", env=env)
    assert done.returncode == 0, done.stderr
    org_id = orjson.loads(done.stdout)["id"]
    done = await asyncio.to_thread(
        gate, "workspace", "create", "Austin", "--organization-id", org_id, env=env
    )
    assert done.returncode == 0, done.stderr
    office_id = orjson.loads(done.stdout)["id"]
    assert await redis.sismember(keys.for_organization(org_id).workspaces, office_id)
    done = await asyncio.to_thread(
        gate, "workspace", "create", "x", "--organization-id", "org_0000000000000000", env=env
    )
    assert done.returncode == 1
    assert "no such organization" in done.stderr

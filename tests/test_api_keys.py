"""API keys: listed without secrets, revoked at once in every process, optionally expiring."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import PLATFORM, Client, MakeClient, auth, new_workspace


async def make_key(client: Client, ws: dict[str, Any], headers: dict[str, str], **body: Any) -> Any:
    resp = await client.post(f"/v1/workspaces/{ws['id']}/keys", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def wallet_status(client: Client, key: str) -> int:
    return (await client.get("/v1/wallet", headers=auth(key))).status


async def revoke_and_wait(
    one: Client, two: Client, ws: dict[str, Any], agent: dict[str, Any]
) -> float:
    """Revoke the agent key in process one; seconds until process two refuses it (< 1 s)."""
    resp = await one.delete(
        f"/v1/workspaces/{ws['id']}/keys/{agent['id']}", headers=auth(ws["key"])
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["revoked"] is True
    started = time.perf_counter()
    assert await wallet_status(one, agent["key"]) == 401  # the revoking process: at once
    while await wallet_status(two, agent["key"]) != 401:
        assert time.perf_counter() - started < 1.0, "the other process still accepts it"
        await asyncio.sleep(0.005)
    # Revoking is not a cache flush for the workspace's other keys: they still work.
    assert await wallet_status(two, ws["key"]) == 200
    return time.perf_counter() - started


async def test_keys_are_listed_without_secrets(client: Client) -> None:
    ws = await new_workspace(client)
    agent = await make_key(client, ws, auth(ws["key"]), role="agent")
    switch = await make_key(client, ws, PLATFORM, role="switch")
    resp = await client.get(f"/v1/workspaces/{ws['id']}/keys", headers=auth(ws["key"]))
    assert resp.status == 200
    listed = (await resp.json())["data"]
    assert {k["id"]: k["role"] for k in listed} == {
        ws["key_id"]: "admin",
        agent["id"]: "agent",
        switch["id"]: "switch",
    }
    text = await resp.text()
    for secret in (ws["key"], agent["key"], switch["key"]):
        assert secret not in text and secret[23:] not in text  # gk_<ws id>_<secret>
    assert all(k["expires_at"] is None and k["expired"] is False for k in listed)
    # The platform sees it too; an agent may not; another tenant finds nothing.
    assert (await client.get(f"/v1/workspaces/{ws['id']}/keys", headers=PLATFORM)).status == 200
    resp = await client.get(f"/v1/workspaces/{ws['id']}/keys", headers=auth(agent["key"]))
    assert resp.status == 403
    other = await new_workspace(client, "Other")
    resp = await client.get(f"/v1/workspaces/{ws['id']}/keys", headers=auth(other["key"]))
    assert resp.status == 404


async def test_revocation_is_at_once_in_every_process(make_client: MakeClient) -> None:
    # Two apps on one Redis stand for two gate processes; both cache keys for a minute.
    one = await make_client(auth_cache_s=60.0)
    two = await make_client(auth_cache_s=60.0)
    ws = await new_workspace(one)
    agent = await make_key(one, ws, auth(ws["key"]), role="agent")
    assert await wallet_status(one, agent["key"]) == 200
    assert await wallet_status(two, agent["key"]) == 200  # now cached in both

    await revoke_and_wait(one, two, ws, agent)
    listed = await (await one.get(f"/v1/workspaces/{ws['id']}/keys", headers=PLATFORM)).json()
    assert agent["id"] not in {k["id"] for k in listed["data"]}


async def test_who_may_revoke_what(client: Client) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    switch = await make_key(client, ws, PLATFORM, role="switch")
    agent = await make_key(client, ws, admin, role="agent")
    base = f"/v1/workspaces/{ws['id']}/keys"
    # An agent cannot revoke; an admin cannot revoke the platform's switch key.
    assert (await client.delete(f"{base}/{ws['key_id']}", headers=auth(agent["key"]))).status == 403
    assert (await client.delete(f"{base}/{switch['id']}", headers=admin)).status == 403
    assert await wallet_status(client, switch["key"]) == 200
    resp = await client.delete(f"{base}/{switch['id']}", headers=PLATFORM)
    assert resp.status == 200
    assert await wallet_status(client, switch["key"]) == 401
    resp = await client.delete(f"{base}/key_000000000000", headers=admin)
    assert resp.status == 404
    assert "GET /v1/workspaces/" in (await resp.json())["error"]["message"]
    other = await new_workspace(client, "Other")
    resp = await client.delete(f"{base}/{agent['id']}", headers=auth(other["key"]))
    assert resp.status == 404
    assert await wallet_status(client, agent["key"]) == 200


async def test_keys_expire_even_while_cached(make_client: MakeClient) -> None:
    client = await make_client(auth_cache_s=60.0)
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    resp = await client.post(
        f"/v1/workspaces/{ws['id']}/keys", json={"role": "agent", "expires_at": past}, headers=admin
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "expires_at"
    resp = await client.post(
        f"/v1/workspaces/{ws['id']}/keys",
        json={"role": "agent", "expires_at": "2030-01-01T00:00:00"},  # no zone: ambiguous
        headers=admin,
    )
    assert resp.status == 400

    soon = datetime.now(UTC) + timedelta(seconds=1.0)
    agent = await make_key(client, ws, admin, role="agent", expires_at=soon.isoformat())
    assert agent["expires_at"].endswith("Z") and agent["expired"] is False
    assert await wallet_status(client, agent["key"]) == 200  # and cached for up to a minute
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    resp = await client.get("/v1/wallet", headers=auth(agent["key"]))
    assert resp.status == 401
    assert "expired" in (await resp.json())["error"]["message"]
    listed = await (await client.get(f"/v1/workspaces/{ws['id']}/keys", headers=admin)).json()
    assert [k["expired"] for k in listed["data"] if k["id"] == agent["id"]] == [True]

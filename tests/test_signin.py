"""A key per person: one-time sign-in links, person-named short-lived keys, the audit log."""

from __future__ import annotations

from typing import Any

from gate.clock import ManualClock
from tests.conftest import PLATFORM, Client, auth, new_workspace


async def link(client: Client, workspace_id: str, person: str, **extra: Any) -> dict[str, Any]:
    resp = await client.post(f"/v1/workspaces/{workspace_id}/signin-links",
                             json={"person": person, **extra}, headers=PLATFORM)  # fmt: skip
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def redeem(client: Client, token: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/signin", json={"token": token})
    body: dict[str, Any] = await resp.json()
    return resp.status, body


async def test_a_link_signs_one_person_in_once_and_the_log_names_them(client: Client) -> None:
    ws = await new_workspace(client, "People")
    made = await link(client, ws["id"], "alice@example.com", key_ttl_s=3600)
    assert made["url"].endswith(f"/billing#signin={made['token']}")
    assert made["expires_in_s"] == 900
    status, alice = await redeem(client, made["token"])
    assert status == 201, alice
    assert (alice["person"], alice["role"], alice["workspace_id"]) == (
        "alice@example.com",
        "admin",
        ws["id"],
    )
    assert (await redeem(client, made["token"]))[0] == 401  # once only
    assert (await redeem(client, "gsl_nonsense"))[0] == 401

    status, bob = await redeem(
        client, (await link(client, ws["id"], "Bob B", role="agent"))["token"]
    )
    assert status == 201 and bob["role"] == "agent"

    # A change made with Alice's key names Alice on the audit log.
    resp = await client.patch("/v1/workspace", json={"inbound_grace_s": 12},
                              headers=auth(alice["key"]))  # fmt: skip
    assert resp.status == 200
    log = await (await client.get("/v1/audit?person=alice%40example.com",
                                  headers=auth(ws["key"]))).json()  # fmt: skip
    actions = [(e["action"], e["person"]) for e in log["data"]]
    assert ("workspace.updated", "alice@example.com") in actions
    assert ("key.created", "alice@example.com") in actions

    # The keys list names each person; revoking Alice leaves Bob signed in.
    keys = await (await client.get(f"/v1/workspaces/{ws['id']}/keys",
                                   headers=auth(ws["key"]))).json()  # fmt: skip
    people = {k["id"]: k["person"] for k in keys["data"]}
    assert people[alice["id"]] == "alice@example.com" and people[bob["id"]] == "Bob B"
    resp = await client.delete(f"/v1/workspaces/{ws['id']}/keys/{alice['id']}",
                               headers=auth(ws["key"]))  # fmt: skip
    assert resp.status == 200
    assert (await client.get("/v1/wallet", headers=auth(alice["key"]))).status == 401
    assert (await client.get("/v1/wallet", headers=auth(bob["key"]))).status == 200


async def test_person_keys_are_short_lived(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client, "Short")
    made = await link(client, ws["id"], "carol", key_ttl_s=60)
    status, carol = await redeem(client, made["token"])
    assert status == 201
    # The key's expiry is the gate's clock plus the link's key_ttl_s.
    keys = await (await client.get(f"/v1/workspaces/{ws['id']}/keys",
                                   headers=auth(ws["key"]))).json()  # fmt: skip
    mine = next(k for k in keys["data"] if k["id"] == carol["id"])
    assert mine["expires_at"] == carol["expires_at"]
    resp = await client.post(f"/v1/workspaces/{ws['id']}/signin-links",
                             json={"person": "dave", "key_ttl_s": 30 * 86400},
                             headers=PLATFORM)  # fmt: skip
    assert resp.status == 400  # a week at most
    resp = await client.post(f"/v1/workspaces/{ws['id']}/signin-links", json={"person": "x"},
                             headers=auth(ws["key"]))  # fmt: skip
    assert resp.status == 403  # the platform vouches for people, not the tenant


async def test_a_platform_with_single_sign_on_mints_person_keys_directly(client: Client) -> None:
    """The SSO path of docs/operating-a-platform.md: the platform key makes the key."""
    ws = await new_workspace(client, "Sso")
    body = {"role": "admin", "person": "erin@corp.example", "expires_at": "2099-01-01T00:00:00Z"}
    resp = await client.post(f"/v1/workspaces/{ws['id']}/keys", headers=PLATFORM, json=body)
    assert resp.status == 201, await resp.text()
    erin = await resp.json()
    assert erin["person"] == "erin@corp.example"
    resp = await client.patch("/v1/workspace", json={"name": "Sso Ltd"}, headers=auth(erin["key"]))
    assert resp.status == 200
    log = await (await client.get("/v1/audit?action=workspace.updated",
                                  headers=auth(ws["key"]))).json()  # fmt: skip
    assert log["data"][0]["person"] == "erin@corp.example"


async def test_a_closed_workspace_issues_and_redeems_no_link(client: Client) -> None:
    ws = await new_workspace(client, "Gone")
    made = await link(client, ws["id"], "frank")
    resp = await client.post(f"/v1/workspaces/{ws['id']}/close", json={"reason": "left"},
                             headers=PLATFORM)  # fmt: skip
    assert resp.status == 200
    assert (await redeem(client, made["token"]))[0] == 402
    resp = await client.post(f"/v1/workspaces/{ws['id']}/signin-links", json={"person": "x"},
                             headers=PLATFORM)  # fmt: skip
    assert resp.status == 402

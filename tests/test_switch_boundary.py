"""Money safety at the switch boundary (issue 8): what a tenant, a lost packet, a paused Redis
or a switch's wrong claim can do to the money, each shown by a test that failed before."""

from __future__ import annotations

from typing import Any

from tests.conftest import PLATFORM, Client, auth, new_switch_key, new_workspace

START = {"call_id": "c1", "direction": "outbound", "from": "+14155550100", "to": "+14155550123"}


async def test_a_tenant_can_neither_mint_a_switch_key_nor_act_as_one(client: Client) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    url = f"/v1/workspaces/{ws['id']}/keys"
    minted = await client.post(url, json={"role": "switch"}, headers=admin)
    assert minted.status == 403, "switch keys are the platform's to issue"
    org_admin = auth((await (await client.post(url, json={"role": "org_admin"},
                                               headers=PLATFORM)).json())["key"])  # fmt: skip
    assert (await client.post(url, json={"role": "switch"}, headers=org_admin)).status == 403

    calls: list[tuple[str, dict[str, Any]]] = [
        ("/v1/calls", START),
        ("/v1/calls/c1/answer", {}),
        ("/v1/calls/c1/heartbeat", {"elapsed_s": 1, "seq": 1}),
        ("/v1/calls/c1/end", {"duration_s": 0}),
    ]
    for key in (admin, org_admin, PLATFORM):
        for path, body in calls:
            resp = await client.post(path, json=body, headers=key)
            assert resp.status == 403, (path, await resp.text())
            assert "switch key" in (await resp.json())["error"]["message"]

    switch = auth(await new_switch_key(client, ws["id"]))
    assert (await client.post("/v1/calls", json=START, headers=switch)).status == 201
    end = await client.post("/v1/calls/c1/end", json={"duration_s": 0}, headers=switch)
    assert end.status == 200

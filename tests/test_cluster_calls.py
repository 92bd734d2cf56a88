"""The whole gate on a 3-master Redis Cluster: calls, ticks, cuts, webhooks and the invariants."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gate.api.http import TICKER
from gate.app import create_app
from gate.clock import ManualClock
from gate.history.check import check_all
from gate.settings import Settings
from gate.store import redis_client
from gate.store.redis_proc import RedisClusterProcs
from tests.conftest import PLATFORM, auth, new_switch_key
from tests.test_delivery import Receiver, receiver, until  # noqa: F401


@pytest.mark.cluster
async def test_calls_on_a_cluster(
    aiohttp_client: Any,
    redis_cluster: RedisClusterProcs,
    settings: Settings,
    clock: ManualClock,
    receiver: Receiver,  # noqa: F811
) -> None:
    client = await aiohttp_client(
        create_app(replace(settings, redis_url=redis_cluster.url), clock=clock)
    )
    workspaces = []
    for i in range(4):  # different hash tags: different slots, likely different masters
        resp = await client.post("/v1/workspaces", json={"name": f"c{i}"}, headers=PLATFORM)
        workspaces.append(await resp.json())
    ws = workspaces[0]
    receiver.workspace_id = ws["id"]
    await client.patch(
        "/v1/workspace", json={"switch_webhook_url": receiver.url}, headers=auth(ws["key"])
    )
    await client.post(
        f"/v1/workspaces/{ws['id']}/adjustments",
        json={"amount_usd": "-9.5", "type": "adjustment", "description": "to 50 cents"},
        headers=PLATFORM,
    )
    for n, w in enumerate(workspaces):
        body = {"call_id": f"k{n}", "direction": "outbound", "from": "+14155550100",
                "to": "+14155550123"}  # fmt: skip
        w["switch"] = auth(await new_switch_key(client, w["id"]))
        resp = await client.post("/v1/calls", json=body, headers=w["switch"])
        assert resp.status == 201, await resp.text()
    ticker = client.app[TICKER]
    for _ in range(200):  # 200 s in 1 s steps: the first workspace's $0.50 lasts 150 s
        clock.advance(1)
        await ticker.run_once()
    state = await (await client.get("/v1/calls/k0", headers=auth(ws["key"]))).json()
    assert state["cut_sent"] and state["granted_s"] == 150
    await until(lambda: any(h.event["type"] == "call.cut" for h in receiver.hits))
    for n, w in enumerate(workspaces):
        resp = await client.post(
            f"/v1/calls/k{n}/end", json={"duration_s": 150}, headers=w["switch"]
        )
        assert (await resp.json())["cost_micros"] == 500_000
    cluster = await redis_client.connect(redis_cluster.url)
    try:
        problems, checked = await check_all(cluster, [w["id"] for w in workspaces])
    finally:
        await cluster.aclose()
    assert (problems, checked) == ([], 4)

"""Workspaces without a webhook URL cost the outbox almost nothing, and a new URL works at once."""

from __future__ import annotations

from gate import metrics
from tests.conftest import Client, auth, new_workspace
from tests.test_delivery import Receiver, receiver, topup, until  # noqa: F401


def leases() -> float:
    return sum(
        sample.value
        for metric in metrics.LUA_CALLS.collect()
        for sample in metric.samples
        if sample.name == "gate_lua_calls_total" and sample.labels["script"] == "outbox_lease"
    )


async def test_no_url_workspace_is_left_alone(
    client: Client,
    receiver: Receiver,  # noqa: F811
) -> None:
    ws = await new_workspace(client)
    await topup(client, ws)  # the outbox learns there is no URL
    await until(lambda: leases() > 0)
    before = leases()
    for _ in range(20):
        await topup(client, ws)
    assert leases() - before <= 1  # 40 events, at most one look at the workspace
    receiver.workspace_id = ws["id"]
    resp = await client.patch(
        "/v1/workspace", json={"switch_webhook_url": receiver.url}, headers=auth(ws["key"])
    )
    assert resp.status == 200
    await topup(client, ws)
    await until(lambda: any(h.event["type"] == "wallet.recharged" for h in receiver.hits))

"""Workspaces without a webhook URL cost the outbox almost nothing, and a new URL works at once."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from gate.api.http import OUTBOX
from gate.store import keys
from tests.conftest import Client, auth, new_workspace
from tests.test_delivery import Receiver, receiver, topup, until  # noqa: F401


async def test_no_url_workspace_is_left_alone(
    client: Client,
    receiver: Receiver,  # noqa: F811
    redis: Redis,
) -> None:
    outbox = client.app[OUTBOX]
    ws = await new_workspace(client)
    await topup(client, ws)  # the outbox learns there is no URL
    await until(lambda: ws["id"] in outbox._quiet)
    k = keys.for_workspace(ws["id"])
    cursor = await redis.hget(k.outbox, "cursor")
    for _ in range(20):
        await topup(client, ws)
    await asyncio.sleep(0.3)  # time for the outbox loop, had it been woken
    # The 40 new events were not looked at (no lease, record, release): the cursor stayed.
    assert await redis.hget(k.outbox, "cursor") == cursor
    assert (await redis.xrevrange(k.events, count=1))[0][0] != cursor
    receiver.workspace_id = ws["id"]
    resp = await client.patch(
        "/v1/workspace", json={"switch_webhook_url": receiver.url}, headers=auth(ws["key"])
    )
    assert resp.status == 200
    assert ws["id"] not in outbox._quiet
    await topup(client, ws)
    await until(lambda: any(h.event["type"] == "wallet.recharged" for h in receiver.hits))


async def test_skipping_stops_at_the_event_seen_without_a_url(client: Client, redis: Redis) -> None:
    """An event raised as a URL is being set is not skipped with the ones before it."""
    from gate.api.http import CTX

    ws = await new_workspace(client)
    k = keys.for_workspace(ws["id"])
    seen = (await redis.xrevrange(k.events, count=1))[0][0].decode()
    late = (await redis.xadd(k.events, {"type": "call.cut", "at": 1, "seq": 99})).decode()
    scripts = client.app[CTX].scripts
    assert (await scripts.call("outbox_lease", [k.outbox], ["me", 1, 30_000]))[0] == 0
    reply = await scripts.call(
        "outbox_record", [k.outbox, k.events, k.deadletter], ["me", 1, 30_000, seen]
    )
    assert reply[0] == 0
    assert (await redis.hget(k.outbox, "cursor")).decode() == seen != late
    await scripts.call("outbox_release", [k.outbox], ["me"])
    await redis.xdel(k.events, late)

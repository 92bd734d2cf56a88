"""Calls nobody vouches for (issue 21 item 2): a lost end is billed to the last evidence the
switch gave plus one tick, never until the money runs out; a call with no evidence for
GATE_EVIDENCE_MAX_S is ended as lost_end; call.extended never outruns the evidence."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from gate.clock import ManualClock
from gate.store import keys
from tests.conftest import Client, MakeClient, auth, new_switch_key, new_workspace
from tests.helpers import adjust
from tests.test_calls import tick

START = {"call_id": "c1", "direction": "outbound", "from": "+14155550100", "to": "+14155550123"}


async def events_of(redis: Redis, workspace_id: str, etype: str) -> list[dict[str, str]]:
    raw = await redis.xrange(keys.for_workspace(workspace_id).events)
    out = []
    for _, fields in raw:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if f["type"] == etype:
            out.append(f)
    return out


async def setup(client: Client, balance_usd: str = "10") -> tuple[dict[str, Any], dict[str, str]]:
    ws = await new_workspace(client)
    if balance_usd != "10":
        await adjust(client, ws, str(float(balance_usd) - 10))
    return ws, auth(await new_switch_key(client, ws["id"]))


async def test_a_lost_end_without_heartbeats_is_not_billed_until_the_money_runs_out(
    client: Client, clock: ManualClock
) -> None:
    """The reproduction: a 40 s call on a $0.50 wallet, its end lost, was billed $0.50."""
    ws, sw = await setup(client, "0.50")
    assert (await client.post("/v1/calls", json=START, headers=sw)).status == 201
    await tick(client, clock, 400)  # hung up at 40 s; the end never came
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    assert state["state"] == "ended", state
    assert state["duration_s"] == 10, "its answer (the only evidence) plus one tick"
    assert state["cost_micros"] == 200_000  # 60/6: the first minute, not the $0.50
    wallet = await (await client.get("/v1/wallet", headers=auth(ws["key"]))).json()
    assert wallet["balance_micros"] == 300_000
    # the switch's end, if it comes late, bills the rest: nothing is lost either way
    end = await client.post("/v1/calls/c1/end", json={"duration_s": 140}, headers=sw)
    assert (await end.json())["cost_micros"] == 480_000  # 140 s: 144 billable at $0.20/min


async def test_a_call_with_no_evidence_for_evidence_max_is_ended_as_lost(
    make_client: MakeClient, clock: ManualClock, redis: Redis
) -> None:
    client = await make_client(evidence_max_s=120)
    ws, sw = await setup(client)
    answered_ms = clock.now_ms()
    assert (await client.post("/v1/calls", json=START, headers=sw)).status == 201
    await tick(client, clock, 110, step=5)
    assert (await (await client.get("/v1/calls/c1", headers=sw)).json())["state"] == "live"
    await tick(client, clock, 20, step=5)
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    assert (state["state"], state["flag"], state["duration_s"]) == ("ended", "lost_end", 10)
    cuts = await events_of(redis, ws["id"], "call.cut")
    assert [c["d:reason"] for c in cuts] == ["lost_end"]
    # the switch was never told to keep the call up past its last evidence plus the window
    extended = await events_of(redis, ws["id"], "call.extended")
    assert extended, "a healthy call is extended while its evidence is recent"
    assert max(int(e["d:hangup_at_ms"]) for e in extended) <= answered_ms + 120_000


async def test_heartbeats_keep_a_long_call_vouched_for(
    make_client: MakeClient, clock: ManualClock
) -> None:
    client = await make_client(evidence_max_s=120)
    _, sw = await setup(client)
    assert (await client.post("/v1/calls", json=START, headers=sw)).status == 201
    for n in range(1, 11):
        await tick(client, clock, 30)
        hb = {"elapsed_s": 30 * n, "seq": n}
        resp = await client.post("/v1/calls/c1/heartbeat", json=hb, headers=sw)
        assert (await resp.json())["action"] == "continue"
    end = await client.post("/v1/calls/c1/end", json={"duration_s": 300}, headers=sw)
    body = await end.json()
    assert (body["duration_s"], body["flag"]) == (300, None)

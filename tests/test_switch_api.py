"""The API a SIP switch needs (issue 11): SIP Call-IDs, numbers as switches have them, no
unusable allow, relative times, event routing, and one switch key for many tenants."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from gate.calls.numbers import to_e164
from gate.clock import ManualClock
from gate.errors import InvalidNumber
from gate.store import keys
from tests.conftest import PLATFORM, Client, MakeClient, auth, new_workspace
from tests.test_calls import call, set_balance, switch_key, wallet
from tests.test_delivery import Receiver, Serve, receiver, setup_ws, until

__all__ = ["receiver"]

SIP_CALL_IDS = [
    "a84b4c76e66710@pc33.atlanta.com",
    "3848276298220188511@atlanta.example.com",
    "f81d4fae/7dec%11d0{a765}00a0c91e6bf6?x=1#y",
    "!\"#$&'()*,;<=>[\\]^`|~",
    "x" * 256,
]


@pytest.mark.parametrize("call_id", SIP_CALL_IDS)
async def test_any_sip_call_id_is_a_call_id(client: Client, call_id: str) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    start = await client.post("/v1/calls", json=call(call_id, answered=False), headers=sw)
    assert start.status == 201, await start.text()
    assert (await start.json())["call_id"] == call_id
    path = f"/v1/calls/{quote(call_id, safe='')}"
    assert (await client.post(f"{path}/answer", headers=sw)).status == 200
    beat = await client.post(f"{path}/heartbeat", json={"elapsed_s": 1, "seq": 1}, headers=sw)
    assert beat.status == 200, await beat.text()
    got = await client.get(path, headers=auth(ws["key"]))
    assert (await got.json())["call_id"] == call_id
    end = await client.post(f"{path}/end", json={"duration_s": 1}, headers=sw)
    assert end.status == 200, await end.text()
    again = await client.get(path, headers=auth(ws["key"]))
    assert (await again.json())["state"] == "ended"


@pytest.mark.parametrize("call_id", ["", "x" * 257, "a b", "tab\there", "é@host"])
async def test_a_call_id_that_is_no_sip_call_id_is_refused(client: Client, call_id: str) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    resp = await client.post("/v1/calls", json=call(call_id), headers=sw)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "validation_error"
    assert (await wallet(client, sw))["reserved_micros"] == 0


@pytest.mark.parametrize(
    "raw",
    [
        "+14155550123",
        "14155550123",
        "0014155550123",
        "sip:+14155550123@pbx.example.com;user=phone",
        "sips:14155550123@10.0.0.1:5061",
        "tel:+1-415-555-0123",
        "+1 (415) 555.0123",
        "14155550123@gw",
    ],
)
def test_numbers_as_switches_have_them_become_e164(raw: str) -> None:
    assert to_e164(raw, "to") == "+14155550123"


@pytest.mark.parametrize(
    "raw", ["0415550123", "+0415550123", "abc", "sip:alice@atlanta.com", "+1", "1" * 16, "+"]
)
def test_what_is_no_e164_number_is_refused(raw: str) -> None:
    with pytest.raises(InvalidNumber):
        to_e164(raw, "to")


async def test_a_start_normalises_its_numbers_or_answers_invalid_number(client: Client) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    body = call("n1") | {"from": "sip:14155550100@kamailio", "to": "0014155550123"}
    assert (await client.post("/v1/calls", json=body, headers=sw)).status == 201
    live = await (await client.get("/v1/calls/n1", headers=auth(ws["key"]))).json()
    assert (live["from"], live["to"]) == ("+14155550100", "+14155550123")
    await client.post("/v1/calls/n1/end", json={"duration_s": 3}, headers=sw)

    bad = await client.post("/v1/calls", json=call("n2") | {"to": "0415550123"}, headers=sw)
    assert bad.status == 400
    error = (await bad.json())["error"]
    assert (error["code"], error["field"]) == ("invalid_number", "to")
    assert (await wallet(client, sw))["reserved_micros"] == 0


async def test_an_inbound_start_that_would_grant_nothing_is_a_402(client: Client) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    patch = await client.patch("/v1/workspace", json={"inbound_grace_s": 0},
                               headers=auth(ws["key"]))  # fmt: skip
    assert patch.status == 200, await patch.text()
    await set_balance(client, ws, 0)
    resp = await client.post("/v1/calls", json=call("in0", "inbound"), headers=sw)
    assert resp.status == 402, await resp.text()
    assert (await resp.json())["error"]["code"] == "insufficient_balance"
    assert (await wallet(client, sw))["reserved_micros"] == 0
    assert (await client.get("/v1/calls/in0", headers=auth(ws["key"]))).status == 404

    # with grace, the same start is an allow limited to the grace
    await client.patch("/v1/workspace", json={"inbound_grace_s": 5}, headers=auth(ws["key"]))
    ok = await client.post("/v1/calls", json=call("in1", "inbound"), headers=sw)
    assert ok.status == 201
    assert (await ok.json())["max_duration_s"] == 5
    assert (await ok.json())["hangup_in_ms"] == 5000
    await client.post("/v1/calls/in1/end", json={"duration_s": 0}, headers=sw)


async def test_every_answer_carries_the_hangup_time_relative_to_now(
    client: Client, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    start = await (await client.post("/v1/calls", json=call("r1"), headers=sw)).json()
    assert start["hangup_in_ms"] == start["granted_s"] * 1000
    assert start["hangup_at_ms"] // 1000 == start["hangup_at"]
    clock.advance(20)
    beat = await client.post("/v1/calls/r1/heartbeat", json={"elapsed_s": 20, "seq": 1},
                             headers=sw)  # fmt: skip
    body = await beat.json()
    assert body["hangup_in_ms"] == body["hangup_at_ms"] - clock.now_ms() > 0
    assert isinstance(body["hangup_in_ms"], int) and body["hangup_in_ms"] < 2**31
    live = await (await client.get("/v1/calls/r1", headers=auth(ws["key"]))).json()
    assert live["hangup_in_ms"] == body["hangup_in_ms"]
    await client.post("/v1/calls/r1/end", json={"duration_s": 20}, headers=sw)


async def _second_receiver(aiohttp_server: Serve) -> Receiver:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/events", rec.handle)
    rec.url = str((await aiohttp_server(app)).make_url("/events"))
    return rec


async def test_the_switch_gets_call_events_only_and_the_rest_go_to_the_events_url(
    make_client: MakeClient, receiver: Receiver, aiohttp_server: Serve
) -> None:
    others = await _second_receiver(aiohttp_server)
    client = await make_client(switch_webhook_events="call", events_webhook_url=others.url)
    ws = await setup_ws(client, receiver)
    others.workspace_id = ws["id"]
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 100_000)  # a transaction.created at once
    limited = call("lim", "inbound")
    assert (await client.post("/v1/calls", json=limited, headers=sw)).status == 201
    await until(lambda: any(h.event["type"] == "call.limit" for h in receiver.hits))
    await until(lambda: any(h.event["type"] == "transaction.created" for h in others.hits))
    assert {h.event["type"][:5] for h in receiver.hits} == {"call."}
    assert all(not h.event["type"].startswith("call.") for h in others.hits)
    hit = next(h for h in receiver.hits if h.event["type"] == "call.limit")
    assert hit.event["data"]["limited"] == 1
    assert 0 < hit.event["data"]["hangup_in_ms"] <= hit.event["data"]["max_duration_s"] * 1000
    Webhook(ws["secret"]).verify(hit.body, hit.headers)  # both signed with the tenant's secret
    other = others.hits[0]
    Webhook(ws["secret"]).verify(other.body, other.headers)
    await client.post("/v1/calls/lim/end", json={"duration_s": 0}, headers=sw)


async def test_a_call_event_for_an_ended_call_is_not_retried(
    client: Client, receiver: Receiver, redis: Redis
) -> None:
    async def refuse_limits(event: dict[str, Any], tries: int) -> int:
        return 503 if event["type"] == "call.limit" else 200

    receiver.respond = refuse_limits
    ws = await setup_ws(client, receiver)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 100_000)
    assert (await client.post("/v1/calls", json=call("gone", "inbound"), headers=sw)).status == 201
    await until(lambda: any(h.event["type"] == "call.limit" for h in receiver.hits))
    await client.post("/v1/calls/gone/end", json={"duration_s": 0}, headers=sw)
    outbox = keys.for_workspace(ws["id"]).outbox
    await until(lambda: redis.hget(outbox, "dropped"), within=10)
    tries = sum(1 for h in receiver.hits if h.event["type"] == "call.limit")
    assert tries <= 3


SERVICE_SWITCH = "service-switch-key-0123456789abcdef"
SERVICE_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def test_one_switch_key_serves_every_workspace(
    make_client: MakeClient, receiver: Receiver, redis: Redis, clock: ManualClock
) -> None:
    client = await make_client(
        switch_key=SERVICE_SWITCH,
        switch_webhook_url=receiver.url,
        switch_webhook_secret=SERVICE_SECRET,
        switch_webhook_events="call",
    )
    sw = auth(SERVICE_SWITCH)
    a, b = await new_workspace(client, "A"), await new_workspace(client, "B")
    receiver.workspace_id = b["id"]
    await set_balance(client, b, 100_000)  # B's inbound calls are limited: call.limit
    cid = "8f2c@10.0.0.1"
    start = await client.post("/v1/calls", json=call(cid) | {"workspace_id": a["id"]}, headers=sw)
    assert start.status == 201, await start.text()
    # the same Call-ID for another tenant is a conflict, not a second call
    clash = await client.post("/v1/calls", json=call(cid) | {"workspace_id": b["id"]}, headers=sw)
    assert clash.status == 409
    nameless = await client.post("/v1/calls", json=call("x1"), headers=sw)
    assert nameless.status == 400
    unknown = call("x2") | {"workspace_id": "ws_0000000000000000"}
    assert (await client.post("/v1/calls", json=unknown, headers=sw)).status == 404

    path = f"/v1/calls/{quote(cid, safe='')}"
    beat = await client.post(f"{path}/heartbeat", json={"elapsed_s": 2, "seq": 1}, headers=sw)
    assert beat.status == 200, await beat.text()
    end = await client.post(f"{path}/end", json={"duration_s": 2}, headers=sw)
    assert end.status == 200
    assert (await wallet(client, auth(a["key"])))["balance_micros"] < 10_000_000
    assert (await wallet(client, auth(b["key"])))["balance_micros"] == 100_000

    # an end Gate never saw a start for names its workspace
    unseen = await client.post("/v1/calls/never-seen@sw/end",
                               json={"duration_s": 6, "workspace_id": b["id"]},
                               headers=sw)  # fmt: skip
    assert unseen.status == 200
    assert (await unseen.json())["unauthorized_call"] is True
    lost = await client.post("/v1/calls/other@sw/end", json={"duration_s": 6}, headers=sw)
    assert lost.status == 400

    # sync over every tenant: a live call of B the switch no longer lists is ended
    started = call("b-live", "inbound") | {"workspace_id": b["id"]}
    assert (await client.post("/v1/calls", json=started, headers=sw)).status == 201
    kept = call("b-kept", "inbound") | {"workspace_id": b["id"]}
    assert (await client.post("/v1/calls", json=kept, headers=sw)).status == 201
    clock.advance(6)  # older than GATE_SYNC_MIN_AGE_S
    synced = await client.post("/v1/calls/sync", json={"call_ids": ["b-kept", "nope"]},
                               headers=sw)  # fmt: skip
    assert synced.status == 200, await synced.text()
    assert (await synced.json())["not_live"] == ["nope"]
    assert [e["call_id"] for e in (await synced.json())["ended"]] == ["b-live"]
    await client.post("/v1/calls/b-kept/end", json={"duration_s": 1}, headers=sw)
    await client.post("/v1/calls/b-live/end", json={"duration_s": 1}, headers=sw)

    # call.* events of every tenant reach the one URL, signed with the service secret
    await until(lambda: receiver.hits)
    Webhook(SERVICE_SECRET).verify(receiver.hits[0].body, receiver.hits[0].headers)
    assert {h.event["type"][:5] for h in receiver.hits} == {"call."}
    # one-off usage names its workspace too
    chat = {"charge_id": "ch1", "service": "chat", "messages": 2, "workspace_id": a["id"]}
    charged = await client.post("/v1/charges", json=chat, headers=sw)
    assert charged.status == 201, await charged.text()
    nameless_charge = await client.post("/v1/charges", json=chat | {"workspace_id": None},
                                        headers=sw)  # fmt: skip
    assert nameless_charge.status == 400

    # the service key is a switch key: it reads no tenant's wallet and creates nothing
    assert (await client.get("/v1/wallet", headers=sw)).status == 400
    made = await client.post("/v1/workspaces", json={"name": "x"}, headers=sw)
    assert made.status == 403
    assert await redis.get(keys.call_owner(cid)) == a["id"].encode()
    assert PLATFORM


async def test_a_sync_from_one_switch_node_ends_only_that_nodes_calls(
    make_client: MakeClient, clock: ManualClock
) -> None:
    """Two Kamailio nodes share the service-wide switch key: each syncs the calls it has up,
    and a node's sync must not end the calls the other node carries."""
    client = await make_client(switch_key=SERVICE_SWITCH)
    sw = auth(SERVICE_SWITCH)
    ws = await new_workspace(client, "A")
    for cid, node in (("a-1", "kam-a"), ("a-2", "kam-a"), ("b-1", "kam-b"), ("old-1", None)):
        body = call(cid) | {"workspace_id": ws["id"]} | ({"node": node} if node else {})
        assert (await client.post("/v1/calls", json=body, headers=sw)).status == 201
    clock.advance(6)  # older than GATE_SYNC_MIN_AGE_S
    synced = await client.post("/v1/calls/sync", json={"call_ids": ["a-1"], "node": "kam-a"},
                               headers=sw)  # fmt: skip
    assert synced.status == 200, await synced.text()
    assert [e["call_id"] for e in (await synced.json())["ended"]] == ["a-2"]
    live = await (await client.get("/v1/calls", headers=auth(ws["key"]))).json()
    assert sorted(c["call_id"] for c in live["data"]) == ["a-1", "b-1", "old-1"]

    # a sync without a node is one switch's: every call it does not list is over
    synced = await client.post("/v1/calls/sync", json={"call_ids": ["a-1"]}, headers=sw)
    assert sorted(e["call_id"] for e in (await synced.json())["ended"]) == ["b-1", "old-1"]
    bad = await client.post("/v1/calls/sync", json={"call_ids": [], "node": "a b"}, headers=sw)
    assert bad.status == 400

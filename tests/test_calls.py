"""The call protocol end to end through HTTP: the start decision table, ticks, cuts, end."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gate.api.http import TICKER
from gate.calls.rating import Increment, cost_micros
from gate.clock import ManualClock
from gate.store import keys
from tests.conftest import PLATFORM, Client, MakeClient, auth, new_switch_key, new_workspace
from tests.helpers import adjust

CARD = """
currency = "USD"
[[number_types]]
prefix = "+1650"
type = "local"
[[rates]]
service = "voice"
prefix = ""
components = {{ voice_base = "0.10", telephony = "0.05", recording = "0.05" }}
connect_fee = "{fee}"
increment = "{inc}"
[[rates]]
service = "voice"
number_type = "local"
components = {{ voice_base = "0" }}
increment = "60/60"
[[rates]]
service = "ai_agent"
components = {{ agent = "0.89" }}
increment = "60/6"
"""


def card(tmp_path: Path, inc: str = "60/6", fee: str = "0") -> str:
    path = tmp_path / f"rates-{inc.replace('/', '-')}-{fee}.toml"
    path.write_text(CARD.format(inc=inc, fee=fee))
    return str(path)


async def switch_key(client: Client, ws: dict[str, Any]) -> dict[str, str]:
    return auth(await new_switch_key(client, ws["id"]))


async def set_balance(client: Client, ws: dict[str, Any], micros: int) -> None:
    """Move the $10 signup credit to `micros` with an operator adjustment."""
    delta = micros - 10_000_000
    if delta:
        resp = await client.post(
            f"/v1/workspaces/{ws['id']}/adjustments",
            json={"amount_usd": str(delta / 1e6), "type": "adjustment", "description": "test"},
            headers=PLATFORM,
        )
        assert resp.status == 201, await resp.text()


async def credit(client: Client, ws: dict[str, Any], micros: int) -> None:
    await adjust(client, ws, str(micros / 1e6))


def call(call_id: str, direction: str = "outbound", **extra: Any) -> dict[str, Any]:
    body = {"call_id": call_id, "direction": direction, "from": "+14155550100",
            "to": "+14155550123"}  # fmt: skip
    return body | extra


async def wallet(client: Client, headers: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get("/v1/wallet", headers=headers)).json()
    return body


async def tick(client: Client, clock: ManualClock, seconds: float, step: float = 10) -> None:
    """Advance the clock in steps, ticking at each as the background ticker would."""
    ticker = client.server.app[TICKER]
    remaining = seconds
    while remaining > 0:
        clock.advance(min(step, remaining))
        remaining -= step
        await ticker.run_once()


async def test_outbound_allow_holds_the_buffer(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    resp = await client.post("/v1/calls", json=call("c1"), headers=sw)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["decision"] == "allow"
    assert body["rate_per_min_usd"] == 0.2
    assert body["increment"] == "60/6"
    assert body["connect_fee_usd"] == 0
    assert body["reserved_usd"] == 0.2
    assert body["granted_s"] == 60
    assert body["max_duration_s"] is None
    assert body["hangup_at"] == clock.now_ms() // 1000 + 60
    assert body["tick_s"] == 10
    assert body["balance_usd"] == 10.0
    assert body["available_usd"] == 9.8
    w = await wallet(client, sw)
    assert (w["reserved_micros"], w["available_micros"], w["live_calls"]) == (200_000, 9_800_000, 1)
    again = await client.post("/v1/calls", json=call("c1"), headers=sw)
    assert again.status == 200
    assert await again.json() == body
    assert (await wallet(client, sw))["reserved_micros"] == 200_000


async def test_outbound_402_in_the_seed_shape(client: Client) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 50_000)
    resp = await client.post("/v1/calls", json=call("c1"), headers=sw)
    assert resp.status == 402
    assert await resp.json() == {
        "error": {
            "code": "insufficient_balance",
            "message": "Wallet balance below minimum to start call",
            "balance_usd": 0.05,
            "required_usd": 0.2,
            "available_usd": 0.05,
        }
    }
    assert (await wallet(client, sw))["reserved_micros"] == 0


async def test_inbound_at_threshold_is_not_limited(client: Client) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    resp = await client.post("/v1/calls", json=call("in1", "inbound"), headers=sw)
    assert resp.status == 201
    assert (await resp.json())["max_duration_s"] is None


async def test_inbound_below_threshold_is_time_limited(client: Client) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 50_000)  # $0.05 pays 12 s at $0.20/min (60/6: not even 60)
    resp = await client.post("/v1/calls", json=call("in1", "inbound"), headers=sw)
    assert resp.status == 201
    body = await resp.json()
    assert body["granted_s"] == 0  # the first increment is 60 s: $0.05 does not cover it
    assert body["max_duration_s"] == 30  # paid seconds + inbound_grace_s
    assert body["reserved_usd"] == 0
    events = await client.server.app[TICKER].ctx.client.xrange(keys.for_workspace(ws["id"]).events)
    assert any(fields[b"type"] == b"call.limit" for _, fields in events)


async def test_inbound_threshold_setting(client: Client) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await client.patch(
        "/v1/workspace", json={"inbound_limit_threshold_usd": 20}, headers=auth(ws["key"])
    )
    resp = await client.post("/v1/calls", json=call("in1", "inbound"), headers=sw)
    body = await resp.json()
    # $10 < $20 threshold: limited to what $10 pays (50 min) plus the grace
    assert body["granted_s"] == 3000
    assert body["max_duration_s"] == 3030
    assert body["reserved_usd"] == 10.0


async def test_suspended_workspace_refuses_inbound(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 0)
    clock.advance(31)  # past inbound_grace_s at zero balance
    resp = await client.post("/v1/calls", json=call("in1", "inbound"), headers=sw)
    assert resp.status == 402
    assert (await resp.json())["error"]["code"] == "workspace_suspended"
    assert (await wallet(client, sw))["status"] == "suspended"
    topup = await client.post(
        "/v1/wallet/topup",
        json={"amount_usd": 10, "payment_method_id": "pm_card_visa"},
        headers=auth(ws["key"]),
    )
    assert topup.status == 201
    assert (await wallet(client, sw))["status"] == "active"
    assert (await client.post("/v1/calls", json=call("in2", "inbound"), headers=sw)).status == 201


async def test_concurrency_limit(client: Client) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await client.patch("/v1/workspace", json={"max_concurrent_calls": 2}, headers=auth(ws["key"]))
    for i in range(2):
        assert (await client.post("/v1/calls", json=call(f"c{i}"), headers=sw)).status == 201
    resp = await client.post("/v1/calls", json=call("c2"), headers=sw)
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "concurrency_limit"
    assert (await wallet(client, sw))["reserved_micros"] == 400_000


async def test_free_local_call_reserves_nothing(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client(rates=card(tmp_path))
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 0)
    resp = await client.post("/v1/calls", json=call("c1", to="+16505550100"), headers=sw)
    assert resp.status == 201
    body = await resp.json()
    assert (body["reserved_usd"], body["rate_per_min_usd"]) == (0, 0)
    end = await client.post("/v1/calls/c1/end", json={"duration_s": 300}, headers=sw)
    assert (await end.json())["cost_micros"] == 0


async def test_answer_later_starts_billing_then(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    resp = await client.post("/v1/calls", json=call("c1", answered=False), headers=sw)
    assert resp.status == 201
    assert (await resp.json())["answered"] is False
    clock.advance(20)  # ringing: not billed
    ans = await client.post("/v1/calls/c1/answer", headers=sw)
    assert ans.status == 200
    assert (await ans.json())["hangup_at"] == clock.now_ms() // 1000 + 60
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    assert state["state"] == "live"
    await tick(client, clock, 30)
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    assert state["billed_s"] == 30


@pytest.mark.parametrize(
    ("inc", "fee", "duration"),
    [
        ("60/60", "0", 61),
        ("60/6", "0", 61),
        ("6/6", "0", 7),
        ("1/1", "0", 59),
        ("60/6", "0.05", 125),
        ("1/1", "0.013", 1),
        ("60/6", "0", 0),
    ],
)
async def test_exact_cost_for_each_increment(
    make_client: MakeClient, tmp_path: Path, clock: ManualClock, inc: str, fee: str, duration: int
) -> None:
    client = await make_client(rates=card(tmp_path, inc, fee))
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    assert (await client.post("/v1/calls", json=call("c1"), headers=sw)).status == 201
    await tick(client, clock, duration)
    resp = await client.post("/v1/calls/c1/end", json={"duration_s": duration}, headers=sw)
    result = await resp.json()
    expected = cost_micros(200_000, round(float(fee) * 1e6), Increment.parse(inc), duration)
    assert result["cost_micros"] == expected
    w = await wallet(client, sw)
    assert w["balance_micros"] == 10_000_000 - expected
    assert w["reserved_micros"] == 0
    rows = await (await client.get("/v1/wallet/transactions", headers=auth(ws["key"]))).json()
    row = rows["data"][0]
    assert (row["type"], row["amount_micros"], row["duration_s"]) == ("call", -expected, duration)
    assert row["increment"] == inc
    assert row["rate_per_min_usd"] == 0.2
    assert row["reference"] == "c1"


async def test_concurrent_starts_take_exactly_what_the_money_covers(client: Client) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 5_100_000)  # covers 25 buffers of $0.20, not 26
    responses = await asyncio.gather(
        *(client.post("/v1/calls", json=call(f"c{i}"), headers=sw) for i in range(40))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses.count(201) == 25
    assert statuses.count(402) == 15
    w = await wallet(client, sw)
    assert w["reserved_micros"] == 25 * 200_000
    assert w["live_calls"] == 25


async def test_hour_long_call_in_milliseconds(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 20_000_000)
    assert (await client.post("/v1/calls", json=call("long"), headers=sw)).status == 201
    await tick(client, clock, 3600)
    state = await (await client.get("/v1/calls/long", headers=sw)).json()
    assert state["billed_s"] == 3600
    assert state["granted_s"] == 3660
    assert state["reserved_micros"] == cost_micros(200_000, 0, Increment(60, 6), 3660)
    end = await client.post("/v1/calls/long/end", json={"duration_s": 3600}, headers=sw)
    assert (await end.json())["cost_micros"] == 12_000_000 // 1  # 60 min at $0.20
    w = await wallet(client, sw)
    assert (w["balance_micros"], w["reserved_micros"]) == (8_000_000, 0)


async def test_outbound_cut_when_money_runs_out(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 500_000)  # $0.50 = 150 s at $0.20/min
    start = await (await client.post("/v1/calls", json=call("c1"), headers=sw)).json()
    await tick(client, clock, 100)
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    assert state["granted_s"] == 150
    assert state["cut_at"] == start["hangup_at"] - 60 + 150
    assert not state["cut_sent"]
    await tick(client, clock, 50, step=1)
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    assert state["cut_sent"]
    events = await redis.xrange(keys.for_workspace(ws["id"]).events)
    cuts = [f for _, f in events if f[b"type"] == b"call.cut"]
    assert len(cuts) == 1
    assert cuts[0][b"d:reason"] == b"balance"
    assert int(cuts[0][b"d:cut_at_ms"]) == state["cut_at"] * 1000
    assert int(cuts[0][b"at"]) == state["cut_at"] * 1000  # sent at cut_at, not a tick later
    hb = await client.post("/v1/calls/c1/heartbeat", json={"elapsed_s": 150, "seq": 1}, headers=sw)
    assert (await hb.json())["action"] == "hangup"
    end = await (await client.post("/v1/calls/c1/end", json={"duration_s": 150},
                                   headers=sw)).json()  # fmt: skip
    assert end["cost_micros"] == 500_000
    assert end["leakage_s"] == 0
    assert (await wallet(client, sw))["balance_micros"] == 0


async def test_limit_lifted_by_top_up(client: Client, clock: ManualClock, redis: Redis) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 300_000)
    assert (await client.post("/v1/calls", json=call("in1", "inbound"), headers=sw)).status == 201
    await tick(client, clock, 40)
    state = await (await client.get("/v1/calls/in1", headers=sw)).json()
    assert state["max_duration_s"] == 90 + 30  # $0.30 pays 90 s, plus the grace
    topup = await client.post(
        "/v1/wallet/topup",
        json={"amount_usd": 10, "payment_method_id": "pm_card_visa"},
        headers=auth(ws["key"]),
    )
    assert topup.status == 201
    await tick(client, clock, 0.001)
    state = await (await client.get("/v1/calls/in1", headers=sw)).json()
    assert state["max_duration_s"] is None
    assert state["granted_s"] == 100
    limits = [
        f for _, f in await redis.xrange(keys.for_workspace(ws["id"]).events)
        if f[b"type"] == b"call.limit"
    ]  # fmt: skip
    assert [f[b"d:max_duration_s"] for f in limits] == [b"120", b""]
    await client.post("/v1/calls/in1/end", json={"duration_s": 45}, headers=sw)


async def test_two_tickers_bill_each_call_once(make_client: MakeClient, clock: ManualClock) -> None:
    a = await make_client()
    b = await make_client()
    ws = await new_workspace(a)
    sw = await switch_key(a, ws)
    for i in range(10):
        assert (await a.post("/v1/calls", json=call(f"c{i}"), headers=sw)).status == 201
    ticker_a, ticker_b = a.server.app[TICKER], b.server.app[TICKER]
    for _ in range(12):
        clock.advance(10)
        await asyncio.gather(ticker_a.run_once(), ticker_b.run_once())
    for i in range(10):
        state = await (await a.get(f"/v1/calls/c{i}", headers=sw)).json()
        assert state["billed_s"] == 120
        assert state["granted_s"] == 180
    w = await wallet(a, sw)
    assert w["reserved_micros"] == 10 * cost_micros(200_000, 0, Increment(60, 6), 180)
    for i in range(10):
        await a.post(f"/v1/calls/c{i}/end", json={"duration_s": 120}, headers=sw)
    assert (await wallet(a, sw))["balance_micros"] == 10_000_000 - 10 * 400_000


async def test_stale_heartbeat_call_is_swept(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    assert (await client.post("/v1/calls", json=call("c1"), headers=sw)).status == 201
    clock.advance(20)
    hb = await client.post("/v1/calls/c1/heartbeat", json={"elapsed_s": 20, "seq": 1}, headers=sw)
    assert (await hb.json())["action"] == "continue"
    stale = await client.post("/v1/calls/c1/heartbeat", json={"elapsed_s": 5, "seq": 1}, headers=sw)
    assert (await stale.json())["billed_s"] == 20
    await tick(client, clock, 100)  # stale_after_s = 90 since the heartbeat
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    assert state["state"] == "ended"
    assert state["stale"] is True
    # billed up to what it could have used: the horizon it had (it kept being extended)
    assert state["duration_s"] <= state["duration_s"] and state["cost_micros"] > 0
    again = await client.post("/v1/calls/c1/end", json={"duration_s": 30}, headers=sw)
    assert (await again.json())["stale"] is True  # the sweep's result stands


async def test_max_call_length_is_swept(make_client: MakeClient, clock: ManualClock) -> None:
    client = await make_client(max_call_s=120)
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    assert (await client.post("/v1/calls", json=call("c1"), headers=sw)).status == 201
    await tick(client, clock, 130)
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    # docs/design.md §4: the last evidence (its answer: no heartbeats) plus one tick; the switch's
    # own end bills the rest
    assert (state["state"], state["duration_s"], state["cost_micros"]) == ("ended", 10, 200_000)
    end = await client.post("/v1/calls/c1/end", json={"duration_s": 120}, headers=sw)
    assert (await end.json())["cost_micros"] == 400_000


async def test_end_is_idempotent_and_exact(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    assert (await client.post("/v1/calls", json=call("c1"), headers=sw)).status == 201
    await tick(client, clock, 95)
    first = await (await client.post("/v1/calls/c1/end", json={"duration_s": 61},
                                     headers=sw)).json()  # fmt: skip
    second = await (await client.post("/v1/calls/c1/end", json={"duration_s": 61},
                                      headers=sw)).json()  # fmt: skip
    assert first == second
    assert first["cost_micros"] == 220_000  # 66 s at $0.20/min
    assert (await wallet(client, sw))["balance_micros"] == 10_000_000 - 220_000


async def test_unauthorized_call_is_billed(client: Client) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 100_000)
    resp = await client.post(
        "/v1/calls/ghost/end",
        json={"duration_s": 120, "to": "+14155550123", "direction": "outbound"},
        headers=sw,
    )
    body = await resp.json()
    assert body["unauthorized_call"] is True
    assert body["cost_micros"] == 400_000
    w = await wallet(client, sw)
    assert w["balance_micros"] == -300_000
    rows = await (await client.get("/v1/wallet/transactions", headers=auth(ws["key"]))).json()
    assert rows["data"][0]["flag"] == "unauthorized_call"


async def test_live_calls_listing_and_isolation(client: Client) -> None:
    a = await new_workspace(client, "A")
    b = await new_workspace(client, "B")
    sa, sb = await switch_key(client, a), await switch_key(client, b)
    await client.post("/v1/calls", json=call("x1"), headers=sa)
    await client.post("/v1/calls", json=call("x2"), headers=sa)
    listing = await (await client.get("/v1/calls?state=live", headers=sa)).json()
    assert [c["call_id"] for c in listing["data"]] == ["x1", "x2"]
    assert (await client.get("/v1/calls/x1", headers=sb)).status == 404
    assert (await client.post("/v1/calls/x1/end", json={"duration_s": 1}, headers=sb)).status == 200
    # b's end of an id it never started is b's own unauthorized call, a's call is untouched
    assert (await (await client.get("/v1/calls/x1", headers=sa)).json())["state"] == "live"
    for cid in ("x1", "x2"):
        await client.post(f"/v1/calls/{cid}/end", json={"duration_s": 1}, headers=sa)


@pytest.mark.parametrize(
    "body",
    [
        {"call_id": "c", "direction": "sideways", "from": "+1415555", "to": "+1415556"},
        {"call_id": "c 1", "direction": "outbound", "from": "+1415555", "to": "+1415556"},
        {"call_id": "c", "direction": "outbound", "from": "+1415555", "to": "+1415556",
         "service": "fax"},
        {"call_id": "x" * 257, "direction": "outbound", "from": "+1415555", "to": "+1415556"},
        {"call_id": "c", "direction": "outbound", "from": "+1415555", "to": "+1415556",
         "answered": "yes"},
    ],
)  # fmt: skip
async def test_bad_starts_change_nothing(client: Client, body: dict[str, Any]) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    resp = await client.post("/v1/calls", json=body, headers=sw)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "validation_error"
    assert (await wallet(client, sw))["reserved_micros"] == 0


@pytest.mark.parametrize("duration", [-1, 1.5, "60", None, 10**9])
async def test_bad_end_changes_nothing(client: Client, duration: Any) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await client.post("/v1/calls", json=call("c1"), headers=sw)
    resp = await client.post("/v1/calls/c1/end", json={"duration_s": duration}, headers=sw)
    assert resp.status == 400
    assert (await wallet(client, sw))["reserved_micros"] == 200_000
    await client.post("/v1/calls/c1/end", json={"duration_s": 0}, headers=sw)


async def test_agent_key_cannot_start_calls(client: Client) -> None:
    ws = await new_workspace(client)
    resp = await client.post(
        f"/v1/workspaces/{ws['id']}/keys", json={"role": "agent"}, headers=auth(ws["key"])
    )
    agent = auth((await resp.json())["key"])
    assert (await client.post("/v1/calls", json=call("c1"), headers=agent)).status == 403


async def test_rate_reload_keeps_live_calls_rate(
    make_client: MakeClient, tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "live.toml"
    path.write_text(CARD.format(inc="60/6", fee="0"))
    client = await make_client(rates=str(path))
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await client.post("/v1/calls", json=call("old"), headers=sw)
    path.write_text(CARD.format(inc="60/6", fee="0").replace('"0.10"', '"0.30"'))
    resp = await client.post("/v1/admin/rates/reload", headers=PLATFORM)
    assert resp.status == 200, await resp.text()
    new = await (await client.post("/v1/calls", json=call("new"), headers=sw)).json()
    assert new["rate_per_min_usd"] == 0.4
    end = await (await client.post("/v1/calls/old/end", json={"duration_s": 60},
                                   headers=sw)).json()  # fmt: skip
    assert end["cost_micros"] == 200_000
    path.write_text("rates = 'broken'")
    bad = await client.post("/v1/admin/rates/reload", headers=PLATFORM)
    assert bad.status == 400
    assert "old one stays" in (await bad.json())["error"]["message"]
    await client.post("/v1/calls/new/end", json={"duration_s": 0}, headers=sw)


async def test_check_catches_a_call_billed_wrong(client: Client, redis: Redis) -> None:
    from gate.api.http import CTX
    from gate.history.check import check_workspace
    from gate.wallet.service import post

    ws = await new_workspace(client)
    rating = [("rate_micros", 200_000), ("increment", "60/6"), ("connect_fee_micros", 0),
              ("duration_s", 61)]  # fmt: skip
    args = {"now_ms": 1, "type": "call", "description": "Call", "floor": "none", "extra": rating}
    ctx = client.server.app[CTX]
    await post(ctx, ws["id"], amount_micros=-220_000, reference="good", **args)  # type: ignore[arg-type]
    assert await check_workspace(redis, ws["id"]) == []
    await post(ctx, ws["id"], amount_micros=-1, reference="bad", **args)  # type: ignore[arg-type]
    problems = await check_workspace(redis, ws["id"])
    assert len(problems) == 1 and "cost(duration) at its rate is 220000" in problems[0], problems
    await redis.srem(keys.WORKSPACES, ws["id"])  # broken on purpose: not for the final check


async def test_ringing_limited_call_survives_a_wake_up(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 100_000)
    ring = await client.post("/v1/calls", json=call("ring", "inbound", answered=False), headers=sw)
    assert (await ring.json())["max_duration_s"] is not None  # limited: its id is in `cuts`
    await credit(client, ws, 50_000)  # a credit wakes the limited calls
    await tick(client, clock, 1)
    assert (await (await client.get("/v1/calls/ring", headers=sw)).json())["state"] == "pending"
    assert (await client.post("/v1/calls/ring/answer", headers=sw)).status == 200
    end = await (await client.post("/v1/calls/ring/end", json={"duration_s": 40},
                                   headers=sw)).json()  # fmt: skip
    assert end["cost_micros"] == 200_000  # billed, not a stale zero


async def test_refund_may_quote_the_payment_it_refunds(client: Client) -> None:
    ws = await new_workspace(client)
    top = await (
        await client.post(
            "/v1/wallet/topup",
            json={"amount_usd": 25, "payment_method_id": "pm_card_visa"},
            headers=auth(ws["key"]),
        )
    ).json()
    body = {"amount_usd": "-25", "type": "refund", "description": "refund",
            "reference": top["reference"]}  # fmt: skip
    url = f"/v1/workspaces/{ws['id']}/adjustments"
    refund = await client.post(url, json=body, headers=PLATFORM)
    assert refund.status == 201, await refund.text()
    assert (await refund.json())["type"] == "refund"
    assert (await client.post(url, json=body, headers=PLATFORM)).status == 200  # a repeat
    other = await client.post(url, json=body | {"amount_usd": "-5"}, headers=PLATFORM)
    assert other.status == 409
    assert (await other.json())["error"]["code"] == "idempotency_key_reused"
    assert (await wallet(client, auth(ws["key"])))["balance_micros"] == 10_000_000


async def test_a_cut_moved_by_new_money_is_sent_again(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 300_000)  # 90 s
    await client.post("/v1/calls", json=call("c1"), headers=sw)
    await tick(client, clock, 95, step=1)  # cut sent at 90 s; the switch keeps talking
    await credit(client, ws, 200_000)  # the money now lasts 150 s
    await tick(client, clock, 60, step=1)
    cuts = [
        int(f[b"d:cut_at_ms"]) for _, f in await redis.xrange(keys.for_workspace(ws["id"]).events)
        if f[b"type"] == b"call.cut"
    ]  # fmt: skip
    assert len(cuts) == 2 and cuts[1] - cuts[0] == 60_000, cuts
    await client.post("/v1/calls/c1/end", json={"duration_s": 150}, headers=sw)


async def test_repeated_start_after_answer_is_the_first_answer(
    client: Client, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    first = await (
        await client.post("/v1/calls", json=call("c1", answered=False), headers=sw)
    ).json()
    clock.advance(15)
    await client.post("/v1/calls/c1/answer", headers=sw)
    again = await client.post("/v1/calls", json=call("c1", answered=False), headers=sw)
    assert again.status == 200
    repeat = await again.json()
    # the same answer; only the relative hangup time counts from now
    assert repeat.pop("hangup_in_ms") == first.pop("hangup_in_ms") - 15_000
    assert repeat == first
    await client.post("/v1/calls/c1/end", json={"duration_s": 10}, headers=sw)


async def test_month_out_of_range_is_a_400(client: Client) -> None:
    ws = await new_workspace(client)
    for month in ("9999-12", "1969-12", "2026-13"):
        resp = await client.get(f"/v1/wallet/transactions?month={month}", headers=auth(ws["key"]))
        assert resp.status == 400, month


async def test_check_is_exact_while_calls_run(client: Client, redis: Redis) -> None:
    from gate.history.check import check_workspace

    ws = await new_workspace(client)
    sw = await switch_key(client, ws)

    async def one(i: int) -> None:
        await client.post("/v1/calls", json=call(f"c{i}"), headers=sw)
        await client.post(f"/v1/calls/c{i}/end", json={"duration_s": i}, headers=sw)

    calls = asyncio.gather(*(one(i) for i in range(60)))
    reports = []
    while not calls.done():
        reports.append(await check_workspace(redis, ws["id"]))
        await asyncio.sleep(0)
    await calls
    assert len(reports) > 3 and all(r == [] for r in reports), reports


async def test_operators_cannot_credit_past_a_billion(client: Client) -> None:
    ws = await new_workspace(client)
    url = f"/v1/workspaces/{ws['id']}/adjustments"
    body = {"amount_usd": "999999990", "type": "adjustment", "description": "big"}
    assert (await client.post(url, json=body, headers=PLATFORM)).status == 201  # $1B exactly
    again = await client.post(url, json=body | {"amount_usd": "0.000001"}, headers=PLATFORM)
    assert again.status == 400
    assert "1,000,000,000" in (await again.json())["error"]["message"]

"""Plans and credit buckets: allowance -> commitment -> universal, for calls and charges, the
cycle reset with a live call across it, the buckets view, and bad input changing nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gate.api.http import PLANS
from gate.calls.rating import RateCard, RateCardError
from gate.clock import ManualClock
from gate.history.check import check_workspace
from gate.store import keys
from gate.wallet.plans import cycle_bounds
from tests.conftest import PLATFORM, Client, MakeClient, auth, new_workspace
from tests.helpers import all_rows, snapshot
from tests.test_calls import call, set_balance, switch_key, tick

CARD = """
currency = "USD"
[[number_types]]
prefix = "+1650"
type = "local"
[[rates]]
service = "voice"
number_type = "local"
components = { voice_base = "0" }
increment = "60/60"
[[rates]]
service = "voice"
components = { voice_base = "0.10", telephony = "0.10" }
increment = "60/6"
[[rates]]
service = "ai_agent"
components = { ai_agent = "0.89" }
increment = "60/6"
[units]
sms_segment = "0.0079"
fax_page = "0.07"
[plans.small]
allowances = { ai_agent = 2, sms = 10 }
commitments = [{ name = "calling", amount = "1", services = ["voice", "sms"] }]
[plans.agents]
allowances = { ai_agent = 30 }
[plans.minutes]
allowances = { voice = 1 }
"""
DAY_MS = 86_400_000
# ManualClock starts at 2027-01-15 08:00 UTC: anchor day 16 ends the cycle 16 h later.
BOUNDARY_MS = 1_800_000_000_000 + 16 * 3600 * 1000


@pytest.fixture
async def plan_client(make_client: MakeClient, tmp_path: Path) -> Client:
    path = tmp_path / "plans.toml"
    path.write_text(CARD)
    return await make_client(rates=str(path))


async def assign(client: Client, ws: dict[str, Any], plan: str | None, anchor: int = 16) -> Any:
    resp = await client.put(
        f"/v1/workspaces/{ws['id']}/plan",
        json={"plan": plan, "cycle_anchor": anchor},
        headers=PLATFORM,
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def plan_workspace(
    client: Client, plan: str = "small", balance: int | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """A workspace (with `balance` micros, else the signup $10) on `plan`, and a switch key."""
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    if balance is not None:
        await set_balance(client, ws, balance)
    await assign(client, ws, plan)
    return ws, sw


async def start_ai(client: Client, sw: dict[str, str], call_id: str) -> dict[str, Any]:
    resp = await client.post("/v1/calls", json=call(call_id, service="ai_agent"), headers=sw)
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def buckets(client: Client, ws: dict[str, Any]) -> dict[str, Any]:
    resp = await client.get("/v1/wallet/buckets", headers=auth(ws["key"]))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return {b["name"]: b for b in body["buckets"]} | {"_": body}


async def end(client: Client, sw: dict[str, str], call_id: str, duration: int) -> Any:
    resp = await client.post(f"/v1/calls/{call_id}/end", json={"duration_s": duration}, headers=sw)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def usage_row(client: Client, ws: dict[str, Any], reference: str) -> dict[str, Any]:
    rows = [r for r in await all_rows(client, ws["key"]) if r["reference"] == reference]
    assert len(rows) == 1
    return rows[0]


async def test_ai_call_spans_the_end_of_its_allowance(
    plan_client: Client, clock: ManualClock
) -> None:
    client = plan_client
    ws, sw = await plan_workspace(client)
    assert (await buckets(client, ws))["ai_agent"]["available_units"] == 120
    # 60 s buffer, all of it allowance: nothing held in money
    assert (await start_ai(client, sw, "ai1"))["reserved_micros"] == 0
    clock.advance(300)
    result = await end(client, sw, "ai1", 300)
    # 120 s from the allowance, 180 s at $0.89/min
    assert result["cost_micros"] == 2_670_000
    assert result["allowance_used_s"] == 120
    row = await usage_row(client, ws, "ai1")
    assert row["amount_micros"] == -2_670_000
    assert row["allowance_units"] == 120
    assert row["source"] == "plan_allowance+universal"
    assert row["wallet_source"] == "plan_allowance:ai_agent=120s,universal=2670000"
    b = await buckets(client, ws)
    assert (b["ai_agent"]["available_units"], b["ai_agent"]["used_pct"]) == (0, 100.0)
    assert b["universal"]["available_micros"] == 10_000_000 - 2_670_000


async def test_a_short_call_returns_what_it_did_not_use(
    plan_client: Client, clock: ManualClock
) -> None:
    client = plan_client
    ws, sw = await plan_workspace(client)
    await start_ai(client, sw, "a")
    assert (await buckets(client, ws))["ai_agent"]["available_units"] == 60  # 60 s held
    clock.advance(61)
    result = await end(client, sw, "a", 61)  # billable 66 s
    assert (result["cost_micros"], result["allowance_used_s"]) == (0, 66)
    assert (await buckets(client, ws))["ai_agent"]["available_units"] == 54


async def test_voice_draws_the_commitment_before_universal(
    plan_client: Client, clock: ManualClock
) -> None:
    client = plan_client
    ws, sw = await plan_workspace(client)
    assert (await client.post("/v1/calls", json=call("v1"), headers=sw)).status == 201
    await tick(client, clock, 600)
    b = await buckets(client, ws)
    assert b["calling"]["reserved_micros"] == 1_000_000  # held before universal money
    live = await (await client.get("/v1/calls/v1", headers=sw)).json()
    assert live["reserved_micros"] >= 1_000_000  # the commitment's hold and universal money
    result = await end(client, sw, "v1", 600)  # 10 min at $0.20 = $2
    assert result["cost_micros"] == 2_000_000
    row = await usage_row(client, ws, "v1")
    assert (row["commitment_micros"], row["universal_micros"]) == (1_000_000, 1_000_000)
    assert row["amount_micros"] == -1_000_000
    assert row["source"] == "commitment+universal"
    b = await buckets(client, ws)
    assert (b["calling"]["available_micros"], b["calling"]["reserved_micros"]) == (0, 0)
    assert b["universal"]["balance_micros"] == 9_000_000


async def test_charges_go_allowance_commitment_universal(plan_client: Client) -> None:
    client = plan_client
    ws, sw = await plan_workspace(client)
    body = {"charge_id": "s1", "service": "sms", "segments": 15}
    resp = await client.post("/v1/charges", json=body, headers=sw)
    assert resp.status == 201, await resp.text()
    row = await resp.json()
    assert (row["allowance_units"], row["commitment_micros"], row["amount_micros"]) == (
        10, 5 * 7900, 0)  # fmt: skip
    assert row["wallet_source"] == "plan_allowance:sms=10,commitment:calling=39500"
    again = await client.post("/v1/charges", json=body, headers=sw)
    assert again.status == 200 and (await again.json())["id"] == row["id"]
    # fax has no allowance or commitment: universal money only
    fax = await client.post("/v1/charges", json={"charge_id": "f1", "service": "fax",
                                                 "pages": 2}, headers=sw)  # fmt: skip
    assert (await fax.json())["amount_micros"] == -140_000
    b = await buckets(client, ws)
    assert b["sms"]["available_units"] == 0
    assert b["calling"]["available_micros"] == 1_000_000 - 39_500


async def test_live_call_across_the_cycle_boundary(
    plan_client: Client, clock: ManualClock, redis: Redis
) -> None:
    client = plan_client
    ws, sw = await plan_workspace(client)
    b = await buckets(client, ws)
    assert b["_"]["cycle_end"] == "2027-01-16T00:00:00.000Z"
    clock.ms = BOUNDARY_MS - 60_000
    await start_ai(client, sw, "x")
    await tick(client, clock, 240)  # 60 s before the boundary, 180 s after
    result = await end(client, sw, "x", 240)
    # 60 s from the old cycle's allowance (the boundary caps it), 120 s from the new one,
    # 60 s of money: without the reset 120 s would be money.
    assert result["cost_micros"] == 890_000
    assert result["allowance_used_s"] == 180
    rows = await all_rows(client, ws["key"])
    cycles = [r for r in rows if r["type"] == "plan_cycle"]
    assert len(cycles) == 2  # the assignment and the boundary
    rolled = cycles[0]  # newest first
    assert rolled["amount_micros"] == 0
    assert rolled["carried_allowance_ai_agent"] == 60
    assert rolled["expired_allowance_ai_agent"] == 60  # 120 - 60 the call used
    assert rolled["expired_allowance_sms"] == 10
    assert rolled["expired_commitment_calling_micros"] == 1_000_000
    row = await usage_row(client, ws, "x")
    assert (row["allowance_units"], row["allowance_prior_units"]) == (120, 60)
    b = await buckets(client, ws)
    assert b["_"]["cycle_start"] == "2027-01-16T00:00:00.000Z"
    assert b["_"]["cycle_end"] == "2027-02-16T00:00:00.000Z"
    assert b["ai_agent"]["available_units"] == 0
    assert not await check_workspace(redis, ws["id"])


async def test_idle_wallet_rolls_once_per_cycle(plan_client: Client, clock: ManualClock) -> None:
    client = plan_client
    ws = await new_workspace(client)
    await assign(client, ws, "agents", anchor=31)
    clock.ms += 100 * DAY_MS  # Apr 25: Jan 31, Feb 28 and Mar 31 passed
    # the cycle worker rolls it without any usage or request on the workspace
    assert await client.server.app[PLANS].run_once() >= 1
    assert await client.server.app[PLANS].run_once() == 0  # settled at the next end
    rows = await all_rows(client, ws["key"], "type=plan_cycle")
    assert len(rows) == 4
    b = await buckets(client, ws)
    assert b["_"]["cycle_start"] == "2027-03-31T00:00:00.000Z"
    assert b["_"]["cycle_end"] == "2027-04-30T00:00:00.000Z"
    assert len(await all_rows(client, ws["key"], "type=plan_cycle")) == 4
    assert (await buckets(client, ws))["ai_agent"]["available"] == 30


async def test_200_concurrent_charges_on_a_plan_wallet(plan_client: Client, redis: Redis) -> None:
    client = plan_client
    ws, sw = await plan_workspace(client, balance=100_000)
    # 10 segments of allowance, $1 of commitment and $0.10 universal at $0.0079 a segment:
    # 10 + floor(1_100_000 / 7_900) = 149 charges fit.
    resps = await asyncio.gather(*[
        client.post("/v1/charges", json={"charge_id": f"c{i}", "service": "sms", "segments": 1},
                    headers=sw) for i in range(200)
    ])  # fmt: skip
    statuses = [r.status for r in resps]
    assert statuses.count(201) == 149
    assert statuses.count(402) == 51
    rows = [r for r in await all_rows(client, ws["key"]) if r["type"] == "sms"]
    assert len({r["reference"] for r in rows}) == len(rows) == 149
    w = await redis.hmget(keys.for_workspace(ws["id"]).wallet, "balance", "al:sms", "cm:calling")
    assert int(w[0]) >= 0 and int(w[1]) == 0
    assert sum(r["cost_micros"] for r in rows) == 149 * 7_900 - 10 * 7_900
    assert not await check_workspace(redis, ws["id"])


async def test_summary_shows_allowance_use_and_equals_the_ledger(
    plan_client: Client, clock: ManualClock
) -> None:
    client = plan_client
    ws, sw = await plan_workspace(client)
    await start_ai(client, sw, "s")
    clock.advance(180)
    await end(client, sw, "s", 180)
    await client.post("/v1/charges", json={"charge_id": "m", "service": "sms", "segments": 12},
                      headers=sw)  # fmt: skip
    summary = await (await client.get("/v1/usage/summary?month=2027-01",
                                      headers=auth(ws["key"]))).json()  # fmt: skip
    usage = {u["bucket"]: u for u in summary["plan_usage"]}
    assert summary["plan"]["plan"] == "small"  # this month: the buckets as they stand
    assert usage["plan_allowance:ai_agent"]["used_units"] == 120
    assert usage["plan_allowance:sms"]["used_units"] == 10
    assert usage["commitment:calling"]["used_micros"] == 2 * 7_900
    rows = await all_rows(client, ws["key"])
    spend = -sum(r["amount_micros"] for r in rows if r["type"] in ("ai_agent", "sms"))
    spend += sum(int(r.get("commitment_micros", 0)) for r in rows)
    assert summary["total_spend_micros"] == spend == 890_000 + 2 * 7_900


async def test_gate_check_sees_a_bucket_that_does_not_match_its_rows(
    plan_client: Client, redis: Redis
) -> None:
    client = plan_client
    ws, sw = await plan_workspace(client)
    await client.post("/v1/charges", json={"charge_id": "m", "service": "sms", "segments": 3},
                      headers=sw)  # fmt: skip
    assert not await check_workspace(redis, ws["id"])
    wallet = keys.for_workspace(ws["id"]).wallet
    await redis.hincrby(wallet, "al:sms", 1)
    problems = await check_workspace(redis, ws["id"])
    assert any("al:sms" in p for p in problems), problems
    await redis.hincrby(wallet, "al:sms", -1)
    await redis.hincrby(wallet, "cm:calling", -5)
    problems = await check_workspace(redis, ws["id"])
    assert any("cm:calling" in p for p in problems), problems
    await redis.hincrby(wallet, "cm:calling", 5)


async def test_plan_bad_input_changes_nothing(plan_client: Client, redis: Redis) -> None:
    client = plan_client
    ws = await new_workspace(client)
    before = await snapshot(redis, ws["id"])
    url = f"/v1/workspaces/{ws['id']}/plan"
    resp = await client.put(url, json={"plan": "gold"}, headers=PLATFORM)
    assert resp.status == 400 and "gold" in (await resp.json())["error"]["message"]
    resp = await client.put(url, json={"plan": "small", "cycle_anchor": 32}, headers=PLATFORM)
    assert resp.status == 400
    resp = await client.put(url, json={"plan": "small"}, headers=auth(ws["key"]))
    assert resp.status == 403
    assert await snapshot(redis, ws["id"]) == before


def test_rate_card_refuses_bad_plans() -> None:
    bad = {
        "allowances = { sms = 10, dance = 3 }": "plans.p.allowances",
        "allowances = { sms = 0 }": "plans.p.allowances.sms",
        "allowances = { sms = 1.5 }": "plans.p.allowances.sms",
        'commitments = [{ name = "a", amount = "1", services = ["sms"] },'
        ' { name = "b", amount = "1", services = ["sms"] }]': "plans.p.commitments[1].services",
        'commitments = [{ name = "a", amount = "1", services = ["boat"] }]':
            "plans.p.commitments[0].services",
        'commitments = [{ name = "a", amount = "x", services = ["sms"] }]':
            "plans.p.commitments[0].amount",
        "colour = 3": 'unknown key "colour"',
    }  # fmt: skip
    head = '[[rates]]\nservice = "voice"\ncomponents = { a = "0.1" }\nincrement = "1/1"\n'
    for entry, named in bad.items():
        with pytest.raises(RateCardError, match=named.replace("[", r"\[").replace("]", r"\]")):
            RateCard.from_toml(head + "[plans.p]\n" + entry, "card.toml")
    with pytest.raises(RateCardError, match="default_plan"):
        RateCard.from_toml('default_plan = "nope"\n' + head, "card.toml")


def test_cycle_bounds_clamp_to_short_months() -> None:
    jan_31 = 1_800_000_000_000 + 16 * DAY_MS  # 2027-01-31 08:00 UTC
    start, end_ms = cycle_bounds(jan_31, 31)
    assert (start, end_ms - start) == (jan_31 - 8 * 3600 * 1000, 28 * DAY_MS)
    start, end_ms = cycle_bounds(1_800_000_000_000, 16)
    assert end_ms - 1_800_000_000_000 == 16 * 3600 * 1000


async def test_default_plan_gives_the_first_30_ai_minutes(
    make_client: MakeClient, clock: ManualClock
) -> None:
    client = await make_client(default_plan=None)  # the shipped card's default plan
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await start_ai(client, sw, "first")
    await tick(client, clock, 31 * 60)
    result = await end(client, sw, "first", 31 * 60)  # 30 min included, then $0.89/min
    assert result["cost_micros"] == 890_000
    w = await (await client.get("/v1/wallet", headers=auth(ws["key"]))).json()
    assert w["balance_micros"] == 10_000_000 - 890_000
    assert w["minutes_left_estimate"]["ai_agent"] == (10_000_000 - 890_000) // 890_000


async def test_allowance_alone_grants_its_minutes_then_cuts(
    plan_client: Client, clock: ManualClock
) -> None:
    client = plan_client
    _, sw = await plan_workspace(client, balance=0)
    start = await start_ai(client, sw, "z")  # no money, but the allowance covers it
    await tick(client, clock, 100)
    state = await (await client.get("/v1/calls/z", headers=sw)).json()
    assert state["granted_s"] == 120  # the allowance, no more: the money is 0
    assert (state["cost_so_far_usd"], state["reserved_micros"]) == (0, 0)  # all allowance
    assert state["cut_at"] == start["hangup_at"] - 60 + 120
    await tick(client, clock, 20, step=1)
    assert (await (await client.get("/v1/calls/z", headers=sw)).json())["cut_sent"]
    result = await end(client, sw, "z", 120)
    assert (result["cost_micros"], result["allowance_used_s"]) == (0, 120)


async def test_plan_taken_away_mid_call(
    plan_client: Client, clock: ManualClock, redis: Redis
) -> None:
    client = plan_client
    ws, sw = await plan_workspace(client)
    await start_ai(client, sw, "h")
    clock.advance(90)
    hb = await client.post("/v1/calls/h/heartbeat", json={"elapsed_s": 90, "seq": 1}, headers=sw)
    assert hb.status == 200
    body = await assign(client, ws, None)  # the plan ends now: 90 s were used under it
    assert body["plan"] is None and [b["type"] for b in body["buckets"]] == ["universal"]
    clock.advance(90)
    result = await end(client, sw, "h", 180)
    assert result["cost_micros"] == 90 * 890_000 // 60  # 90 s covered, 90 s money
    rows = await all_rows(client, ws["key"], "type=plan_cycle")
    assert rows[0]["carried_allowance_ai_agent"] == 90
    assert rows[0]["expired_allowance_ai_agent"] == 30
    assert not await check_workspace(redis, ws["id"])


async def test_a_free_local_call_takes_no_allowance(
    plan_client: Client, clock: ManualClock, redis: Redis
) -> None:
    client = plan_client
    ws, sw = await plan_workspace(client, "minutes")
    local = call("free", to="+16505550123")
    assert (await client.post("/v1/calls", json=local, headers=sw)).status == 201
    await tick(client, clock, 120)
    result = await end(client, sw, "free", 120)
    assert (result["cost_micros"], result["allowance_used_s"]) == (0, 0)
    assert (await buckets(client, ws))["voice"]["available_units"] == 60
    await client.post("/v1/calls", json=call("paid"), headers=sw)  # $0.20/min
    await tick(client, clock, 90)
    result = await end(client, sw, "paid", 90)  # billable 90: 60 s allowance, 30 s money
    assert (result["cost_micros"], result["allowance_used_s"]) == (100_000, 60)
    assert not await check_workspace(redis, ws["id"])


async def test_a_plan_change_is_on_the_audit_log(plan_client: Client) -> None:
    client = plan_client
    ws = await new_workspace(client)
    url = f"/v1/workspaces/{ws['id']}/plan"
    resp = await client.put(url, json={"plan": "small", "cycle_anchor": 3}, headers=PLATFORM)
    assert resp.status == 200, await resp.text()
    log = await (await client.get("/v1/audit?action=plan.set", headers=auth(ws["key"]))).json()
    entry = log["data"][0]
    assert (entry["key_id"], entry["target"]) == ("platform", "small")
    assert entry["before"] == {"plan": None, "cycle_anchor": None}
    assert entry["after"] == {"plan": "small", "cycle_anchor": 3}

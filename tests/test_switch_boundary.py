"""Money safety at the switch boundary (issue 8): what a tenant, a lost packet, a paused Redis
or a switch's wrong claim can do to the money, each shown by a test that failed before."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gate import metrics
from gate.api.http import CALLS, TICKER
from gate.calls.service import StartParams, undos_done
from gate.clock import ManualClock
from gate.errors import GateTimeout
from gate.history.check import check_all
from gate.store import keys
from gate.store.redis_proc import RedisServer
from tests.conftest import PLATFORM, Client, MakeClient, auth, new_switch_key, new_workspace
from tests.helpers import all_rows
from tests.test_calls import set_balance, tick

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


# --- 1. phantom calls: a start the switch saw fail is never committed -----------------------


async def test_a_start_past_its_deadline_is_refused_by_the_script(
    client: Client, redis: Redis
) -> None:
    ws = await new_workspace(client)
    calls = client.server.app[CALLS]
    params = StartParams("late", "outbound", "+14155550100", "+14155550123", "voice",
                         None, None, None, True)  # fmt: skip
    with pytest.raises(GateTimeout):
        await calls.start(ws["id"], params, deadline_ms=time.time_ns() // 1_000_000 - 1)
    k = keys.for_workspace(ws["id"])
    assert await redis.hlen(k.live) == 0
    assert int(await redis.hget(k.wallet, "reserved")) == 0


async def test_a_start_whose_reply_comes_too_late_is_undone(client: Client, redis: Redis) -> None:
    """The script ran in time, but Gate gave up before reading its reply (a stalled process):
    Gate answers 503 and removes the call itself, leaving no row and no ended result."""
    ws = await new_workspace(client)
    calls = client.server.app[CALLS]
    params = StartParams("late", "outbound", "+14155550100", "+14155550123", "voice",
                         None, None, None, True)  # fmt: skip
    with pytest.raises(GateTimeout):
        await calls.start(ws["id"], params, expires_at=asyncio.get_running_loop().time())
    await undos_done()
    k = keys.for_workspace(ws["id"])
    assert await redis.hlen(k.live) == 0, "the late start is still live"
    assert int(await redis.hget(k.wallet, "reserved")) == 0
    assert not await redis.hexists(k.ended, "late"), "a later real end must still be billed"
    assert await redis.xlen(k.ledger) == 1, "only the signup credit"


async def test_a_start_behind_a_paused_redis_answers_503_and_never_commits(
    make_client: MakeClient, tmp_path: Path
) -> None:
    with RedisServer.start(tmp_path / "paused") as server:
        # A warm auth cache, as in production: the start's script is what waits on Redis.
        client = await make_client(redis_url=server.url, auth_cache_s=60.0)
        ws = await new_workspace(client)
        sw = auth(await new_switch_key(client, ws["id"]))
        assert (await client.get("/v1/wallet", headers=sw)).status == 200
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            resp = await client.post("/v1/calls", json=START | {"timeout_ms": 300}, headers=sw)
            waited = time.perf_counter() - started
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["error"]["code"] == "gate_timeout"
        print(f"paused Redis: start answered 503 after {waited * 1000:.0f} ms (deadline 300 ms)")
        assert waited < 1.5, f"answered after {waited:.2f} s; the deadline was 0.3 s"
        # Redis resumes and runs the queued start: past its deadline, it must change nothing.
        check = Redis.from_url(server.url)
        try:
            await asyncio.sleep(0.3)
            k = keys.for_workspace(ws["id"])
            assert await check.hlen(k.live) == 0, "a phantom call was committed"
            assert int(await check.hget(k.wallet, "reserved")) == 0
            # The failure policy: the switch sends end with duration 0; a late start after it
            # is refused too, and nothing is billed.
            end = await client.post("/v1/calls/c1/end", json={"duration_s": 0}, headers=sw)
            assert end.status == 200 and (await end.json())["cost_micros"] == 0
            again = await client.post("/v1/calls", json=START, headers=sw)
            assert again.status == 409
            assert await check.xlen(k.ledger) == 1, "only the signup credit"
            problems, _ = await check_all(check, [ws["id"]])
            assert problems == []
        finally:
            await check.aclose()


async def test_the_failure_policy_end_is_clean_in_either_order(client: Client) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    # The start committed but its answer was lost: end(0) releases the hold, bills nothing.
    assert (await client.post("/v1/calls", json=START, headers=sw)).status == 201
    end = await (await client.post("/v1/calls/c1/end", json={"duration_s": 0}, headers=sw)).json()
    assert end["cost_micros"] == 0
    assert (await wallet(client, sw))["reserved_usd"] == 0
    # The end overtook a start that was never committed: no row, and the start stays refused.
    end = await client.post("/v1/calls/c2/end", json={"duration_s": 0}, headers=sw)
    body = await end.json()
    assert body["flag"] == "never_started" and body["transaction_id"] is None
    assert (
        await client.post("/v1/calls", json=START | {"call_id": "c2"}, headers=sw)
    ).status == 409
    rows = await all_rows(client, ws["key"], "type=call")
    assert [r["reference"] for r in rows] == ["c1"]


async def wallet(client: Client, headers: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get("/v1/wallet", headers=headers)).json()
    return body


# --- 2. lost ends are billed by evidence, never by the horizon ------------------------------


async def test_sync_ends_calls_the_switch_no_longer_has_billed_to_the_last_evidence(
    client: Client, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    for n in (1, 2, 3):
        assert (await client.post("/v1/calls", json=START | {"call_id": f"c{n}"},
                                  headers=sw)).status == 201  # fmt: skip
    await tick(client, clock, 20)
    first = await (await client.post("/v1/calls/sync", json={"call_ids": ["c1", "c2", "c3"]},
                                      headers=sw)).json()  # fmt: skip
    assert first["ended"] == [] and first["not_live"] == []
    await tick(client, clock, 40)  # c2 and c3 hung up somewhere in these 40 s; ends lost
    resp = await client.post("/v1/calls/sync", json={"call_ids": ["c1", "ghost"]}, headers=sw)
    body = await resp.json()
    assert sorted(e["call_id"] for e in body["ended"]) == ["c2", "c3"]
    assert body["not_live"] == ["ghost"], "a call up at the switch that Gate never allowed"
    for ended in body["ended"]:
        assert ended["lost_end"] is True
        assert ended["duration_s"] == 30, "the sync that last saw it up, plus one tick"
        assert ended["cost_micros"] == 200_000  # 60/6 increments: the first minute
    rows = await all_rows(client, ws["key"], "type=call")
    assert {r["flag"] for r in rows} == {"lost_end"}
    live = await (await client.get("/v1/calls", headers=sw)).json()
    assert [c["call_id"] for c in live["data"]] == ["c1"]
    view = await wallet(client, sw)
    assert view["reserved_usd"] == live["data"][0]["reserved_usd"], "their holds released"


async def test_a_just_started_call_is_not_ended_by_a_sync_taken_before_it(
    client: Client, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    assert (await client.post("/v1/calls", json=START, headers=sw)).status == 201
    clock.advance(1)
    body = await (await client.post("/v1/calls/sync", json={"call_ids": []}, headers=sw)).json()
    assert body["ended"] == []
    clock.advance(5)
    body = await (await client.post("/v1/calls/sync", json={"call_ids": []}, headers=sw)).json()
    assert [e["call_id"] for e in body["ended"]] == ["c1"]
    # its answer plus one tick (issue 21), never past Gate's clock: 6 s, the first minute
    assert body["ended"][0]["duration_s"] == 6 and body["ended"][0]["cost_micros"] == 200_000


async def test_a_syncing_switch_that_goes_silent_is_billed_evidence_plus_one_tick(
    client: Client, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    assert (await client.post("/v1/calls", json=START, headers=sw)).status == 201
    await tick(client, clock, 30)
    await client.post("/v1/calls/sync", json={"call_ids": ["c1"]}, headers=sw)
    await tick(client, clock, 200)  # the switch died: no end, no syncs; stale_after_s = 90
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    assert state["state"] == "ended" and state["stale"] is True
    assert state["duration_s"] == 40, "the last sync (30 s) plus one tick (10 s)"
    assert (await wallet(client, sw))["reserved_usd"] == 0


async def test_a_silent_switch_whose_end_is_lost_is_billed_to_its_evidence_not_its_money(
    client: Client, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    await set_balance(client, ws, 500_000)  # $0.50 at $0.20/min: 150 s
    assert (await client.post("/v1/calls", json=START, headers=sw)).status == 201
    await tick(client, clock, 150 + 90 + 20)  # cut at 150 s; no end within stale_after_s
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    assert state["state"] == "ended" and state["stale"] is True
    # its answer is all the evidence (issue 21): plus one tick, not the $0.50 it held
    assert state["duration_s"] == 10 and state["cost_micros"] == 200_000
    assert (await wallet(client, sw))["balance_usd"] == 0.3


async def test_an_unanswered_start_whose_answer_is_lost_expires_unbilled(
    client: Client, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    resp = await client.post("/v1/calls", json=START | {"answered": False}, headers=sw)
    assert resp.status == 201
    assert (await wallet(client, sw))["reserved_usd"] > 0
    await tick(client, clock, 130)  # GATE_RING_TIMEOUT_S = 120
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    assert state["state"] == "ended" and state["cost_micros"] == 0
    assert state["flag"] == "ring_timeout" and state["transaction_id"] is None
    view = await wallet(client, sw)
    assert view["reserved_usd"] == 0 and view["balance_usd"] == 10


# --- 3. what the switch claims is bounded by the gate's clock -------------------------------


async def test_an_end_claiming_an_hour_after_one_second_is_clamped(
    client: Client, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    await set_balance(client, ws, 1_000_000)
    assert (await client.post("/v1/calls", json=START, headers=sw)).status == 201
    clock.advance(1)
    before = _clamps("end")
    resp = await client.post("/v1/calls/c1/end", json={"duration_s": 3600}, headers=sw)
    body = await resp.json()
    assert body["duration_s"] == 6, "1 s by the gate's clock + 5 s tolerance"
    assert body["duration_clamped"] is True and body["cost_micros"] == 200_000
    assert body["balance_usd"] == 0.8
    rows = await all_rows(client, ws["key"], "type=call")
    assert rows[0]["duration_clamped"] == "true" and rows[0]["duration_s"] == 6
    assert _clamps("end") == before + 1


async def test_a_heartbeat_cannot_bill_ahead_of_the_gates_clock(
    client: Client, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    assert (await client.post("/v1/calls", json=START, headers=sw)).status == 201
    clock.advance(1)
    hb = {"elapsed_s": 3600, "seq": 1}
    body = await (await client.post("/v1/calls/c1/heartbeat", json=hb, headers=sw)).json()
    assert body["elapsed_clamped"] is True and body["billed_s"] == 6
    view = await wallet(client, sw)
    assert view["available_usd"] > 9.5, "the wallet is not frozen for every other call"
    other = await client.post("/v1/calls", json=START | {"call_id": "c2"}, headers=sw)
    assert other.status == 201
    for cid in ("c1", "c2"):
        await client.post(f"/v1/calls/{cid}/end", json={"duration_s": 1}, headers=sw)
    rows = await all_rows(client, ws["key"], "type=call")
    assert {r["reference"]: r.get("duration_clamped") for r in rows} == {"c1": "true", "c2": None}


def _clamps(route: str) -> float:
    value = metrics.REGISTRY.get_sample_value("gate_call_clamps_total", {"route": route})
    return value or 0.0


# --- 4. settings that move money have platform ceilings; the rate card decides rates ------


async def test_inbound_grace_has_a_platform_ceiling(
    client: Client, redis: Redis, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    resp = await client.patch("/v1/workspace", json={"inbound_grace_s": 3600}, headers=admin)
    assert resp.status == 400
    assert "GATE_INBOUND_GRACE_MAX_S" in (await resp.json())["error"]["message"]
    resp = await client.patch("/v1/workspace", json={"max_concurrent_calls": 10**6},
                              headers=admin)  # fmt: skip
    assert resp.status == 400
    # A value stored before the ceiling existed is held to it by the script itself.
    await redis.hset(keys.for_workspace(ws["id"]).ws, "inbound_grace_s", 3600)
    sw = auth(await new_switch_key(client, ws["id"]))
    await set_balance(client, ws, 0)
    inbound = START | {"direction": "inbound"}
    body = await (await client.post("/v1/calls", json=inbound, headers=sw)).json()
    assert body["max_duration_s"] == 60, "0 s paid + the 60 s ceiling, not 3600"
    await tick(client, clock, 70)
    await client.post("/v1/calls/c1/end", json={"duration_s": 60}, headers=sw)
    clock.advance(61)  # below zero past the grace: suspended, and the wallet says so
    view = await wallet(client, sw)
    assert view["balance_usd"] == -0.2 and view["status"] == "suspended"
    again = await client.post("/v1/calls", json=inbound | {"call_id": "c2"}, headers=sw)
    assert again.status == 402


async def test_the_number_type_is_the_rate_cards_not_the_switchs(client: Client) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    await set_balance(client, ws, 0)
    resp = await client.post("/v1/calls", json=START | {"number_type": "local"}, headers=sw)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["field"] == "number_type" and err["number_type"] is None
    assert (await wallet(client, sw))["live_calls"] == 0
    # A number the card itself calls toll-free may say so.
    toll_free = START | {"direction": "inbound", "to": "+18005550100", "number_type": "toll_free"}
    resp = await client.post("/v1/calls", json=toll_free, headers=sw)
    assert resp.status == 201 and (await resp.json())["number_type"] == "toll_free"
    await client.post("/v1/calls/c1/end", json={"duration_s": 0}, headers=sw)


# --- 6. usage is never lost ---------------------------------------------------------------

NO_CATCH_ALL = """
[[rates]]
service = "voice"
direction = "outbound"
prefix = "+44"
components = { voice_base = "0.10" }
increment = "60/6"
"""


async def test_no_rate_is_422_at_start_and_recorded_at_zero_at_an_unseen_end(
    make_client: MakeClient, tmp_path: Path
) -> None:
    card = tmp_path / "uk-only.toml"
    card.write_text(NO_CATCH_ALL)
    client = await make_client(rates=str(card))
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    resp = await client.post("/v1/calls", json=START | {"direction": "inbound"}, headers=sw)
    assert resp.status == 422
    err = (await resp.json())["error"]
    assert err["code"] == "no_rate"
    assert "inbound calls from +14155550100" in err["message"]
    end = {"duration_s": 42, "direction": "outbound", "from": "+14155550100", "to": "+3312345"}
    resp = await client.post("/v1/calls/u1/end", json=end, headers=sw)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["unauthorized_call"] is True and body["cost_micros"] == 0
    rows = await all_rows(client, ws["key"], "type=call")
    assert rows[0]["no_rate"] == "true" and rows[0]["duration_s"] == 42


# --- 5. a switch without heartbeats follows hangup_at and call.extended ---------------------


async def test_a_switch_without_heartbeats_cuts_no_healthy_call_and_every_unpaid_one(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    """The README recipe: arm a timer at the start's hangup_at, move it on call.extended and
    call.limit, hang up at it or on call.cut. Five minutes, no heartbeats, no syncs."""
    rich, poor = await new_workspace(client, "rich"), await new_workspace(client, "poor")
    await set_balance(client, poor, 500_000)  # $0.50 at $0.20/min: 150 s
    ticker = client.server.app[TICKER]
    armed: dict[str, int] = {}
    keys_of: dict[str, dict[str, str]] = {}
    answered_at = clock.now_ms()
    for ws in (rich, poor):
        sw = auth(await new_switch_key(client, ws["id"]))
        body = await (await client.post("/v1/calls", json=START | {"call_id": ws["id"]},
                                        headers=sw)).json()  # fmt: skip
        armed[ws["id"]], keys_of[ws["id"]] = body["hangup_at"] * 1000, sw
    last_seen = dict.fromkeys(armed, "0-0")
    hung_up: dict[str, int] = {}
    extended = dict.fromkeys(armed, 0)
    for _ in range(300):
        clock.advance(1)
        await ticker.run_once()
        for wid in list(armed):
            stream = keys.for_workspace(wid).events
            for entry_id, raw in await redis.xrange(stream, f"({last_seen[wid]}", "+"):
                last_seen[wid] = entry_id.decode()
                fields = {k.decode(): v.decode() for k, v in raw.items()}
                if fields.get("d:call_id") != wid:
                    continue
                if fields["type"] == "call.cut":
                    armed[wid] = clock.now_ms()
                elif fields["type"] in ("call.extended", "call.limit") and fields.get(
                    "d:hangup_at_ms"
                ):
                    extended[wid] += fields["type"] == "call.extended"
                    armed[wid] = int(fields["d:hangup_at_ms"])
            if clock.now_ms() >= armed[wid]:
                hung_up[wid] = (clock.now_ms() - answered_at) // 1000
                end = {"duration_s": hung_up[wid]}
                await client.post(f"/v1/calls/{wid}/end", json=end, headers=keys_of[wid])
                del armed[wid]
    assert rich["id"] not in hung_up, f"a healthy call was cut at {hung_up.get(rich['id'])} s"
    assert hung_up[poor["id"]] == 150, "the unpaid call ends when its money does"
    assert 9 <= extended[rich["id"]] <= 10, f"{extended} call.extended: one per half buffer"
    end = await client.post(f"/v1/calls/{rich['id']}/end", json={"duration_s": 300},
                            headers=keys_of[rich["id"]])  # fmt: skip
    assert (await end.json())["cost_micros"] == 1_000_000
    poor_rows = await all_rows(client, poor["key"], "type=call")
    assert poor_rows[0]["amount_micros"] == -500_000 and "leak_s" not in poor_rows[0]


async def test_a_hundred_starts_queued_behind_a_paused_redis_never_commit(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """Under load: a hundred starts wait on a paused Redis with timeout_ms 100; all answer
    503, all reach Redis when it resumes (commandstats), and none commits."""
    with RedisServer.start(tmp_path / "paused") as server:
        client = await make_client(redis_url=server.url, auth_cache_s=60.0)
        ws = await new_workspace(client)
        sw = auth(await new_switch_key(client, ws["id"]))
        await client.get("/v1/wallet", headers=sw)  # a warm auth cache: the scripts queue
        check = Redis.from_url(server.url)
        try:
            before = (await check.info("commandstats"))["cmdstat_evalsha"]["calls"]
            os.kill(server.pid, signal.SIGSTOP)
            try:
                answers = await asyncio.gather(*(
                    client.post("/v1/calls", headers=sw,
                                json=START | {"call_id": f"q{i}", "timeout_ms": 100})
                    for i in range(100)
                ))  # fmt: skip
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert [a.status for a in answers] == [503] * 100
            for _ in range(100):  # Redis works through the backlog
                stats = await check.info("commandstats")
                if stats["cmdstat_evalsha"]["calls"] - before >= 100:
                    break
                await asyncio.sleep(0.05)
            assert stats["cmdstat_evalsha"]["calls"] - before >= 100, "the starts reached Redis"
            await undos_done()
            k = keys.for_workspace(ws["id"])
            assert await check.hlen(k.live) == 0, "a 503 start was committed"
            assert int(await check.hget(k.wallet, "reserved")) == 0
        finally:
            await check.aclose()


async def test_a_promised_heartbeat_that_never_comes_ends_the_call_as_stale(
    client: Client, clock: ManualClock
) -> None:
    """A heartbeat switch whose call (and end) is lost before its first heartbeat: the start's
    heartbeat_s is the promise, so its silence counts from the answer."""
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    body = START | {"heartbeat_s": 10}
    assert (await client.post("/v1/calls", json=body, headers=sw)).status == 201
    await tick(client, clock, 110)  # stale_after_s = 90, no heartbeat ever
    state = await (await client.get("/v1/calls/c1", headers=sw)).json()
    assert state["state"] == "ended" and state["stale"] is True
    assert state["duration_s"] == 10, "the answer (0 s) plus one tick"


async def test_answers_carry_hangup_at_in_milliseconds(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    clock.advance(0.7)  # not on a whole second: hangup_at (seconds) rounds down, _ms is exact
    start = await (await client.post("/v1/calls", json=START, headers=sw)).json()
    assert start["hangup_at_ms"] == clock.now_ms() + 60_000
    assert start["hangup_at"] == start["hangup_at_ms"] // 1000
    clock.advance(5)
    hb = {"elapsed_s": 5, "seq": 1}
    beat = await (await client.post("/v1/calls/c1/heartbeat", json=hb, headers=sw)).json()
    assert beat["hangup_at_ms"] == start["hangup_at_ms"] + 5_000

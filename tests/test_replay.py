"""Replays never bill twice: after Redis forgot the first answer, the archive gives it."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from gate.clock import ManualClock
from gate.store import keys
from tests.archive_fixtures import database_url, pg_database
from tests.conftest import PLATFORM, auth, new_workspace
from tests.helpers import all_rows, wallet_json
from tests.test_archive import Client, archive_pass, archive_redis, client, redis, settings

__all__ = ["archive_redis", "client", "database_url", "pg_database", "redis", "settings"]

CALL = {"direction": "outbound", "from": "+15550001", "to": "+15551234", "service": "voice"}


async def switch_key(client: Client, ws: dict[str, Any]) -> dict[str, str]:
    """A switch key, minted by the platform (docs/design.md §3: only the platform issues them)."""
    resp = await client.post(
        f"/v1/workspaces/{ws['id']}/keys", json={"role": "switch"}, headers=PLATFORM
    )
    assert resp.status == 201, await resp.text()
    return auth((await resp.json())["key"])


async def test_an_end_replayed_after_redis_forgot_the_call_answers_the_first_result(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    resp = await client.post("/v1/calls", json={"call_id": "c1", **CALL}, headers=sw)
    assert resp.status == 201, await resp.text()
    clock.advance(95)
    end = {"duration_s": 95, "hangup_cause": "NORMAL_CLEARING"}
    first = await client.post("/v1/calls/c1/end", json=end, headers=sw)
    assert first.status == 200
    first_body = await first.json()
    assert first_body["cost_micros"] == 320_000  # 95 s bills 96 s (60/6) at $0.20/min
    # A day later the rows move to SQL and leave Redis; the next call's end then trims
    # c1's ended record out of Redis (kept until its row was archived).
    clock.advance(25 * 3600)
    await archive_pass(client)
    assert await redis.xlen(keys.for_workspace(ws["id"]).ledger) == 0
    await client.post("/v1/calls", json={"call_id": "c2", **CALL}, headers=sw)
    await client.post("/v1/calls/c2/end", json={"duration_s": 0}, headers=sw)
    assert not await redis.hexists(keys.for_workspace(ws["id"]).ended, "c1")
    balance = (await wallet_json(client, ws["key"]))["balance_micros"]
    for body in (end, {**end, **CALL}):  # with or without the rating of an unknown call
        again = await client.post("/v1/calls/c1/end", json=body, headers=sw)
        assert again.status == 200
        assert await again.json() == first_body
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == balance
    rows = await all_rows(client, ws["key"], "type=call")
    assert [r["reference"] for r in rows] == ["c2", "c1"]


async def test_an_end_replayed_while_the_archiver_lags_past_a_day_is_not_billed_twice(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    """Issue 21 item 3: Redis kept the ended record only 24 h, the archive did not have the
    row yet, and the switch's retry was billed again as an unauthorized call."""
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await client.post("/v1/calls", json={"call_id": "c1", **CALL}, headers=sw)
    clock.advance(95)
    end = {"duration_s": 95, **CALL}
    first = await (await client.post("/v1/calls/c1/end", json=end, headers=sw)).json()
    for n in range(2, 5):  # the archiver is down; other calls end over 3 days
        clock.advance(25 * 3600)
        await client.post("/v1/calls", json={"call_id": f"c{n}", **CALL}, headers=sw)
        await client.post(f"/v1/calls/c{n}/end", json={"duration_s": 0}, headers=sw)
    assert await redis.hexists(keys.for_workspace(ws["id"]).ended, "c1")
    balance = (await wallet_json(client, ws["key"]))["balance_micros"]
    again = await client.post("/v1/calls/c1/end", json=end, headers=sw)
    assert await again.json() == first
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == balance
    rows = await all_rows(client, ws["key"], "type=call")
    assert [r["reference"] for r in rows].count("c1") == 1
    await archive_pass(client)  # the archiver is back: the record may go now
    await client.post("/v1/calls", json={"call_id": "c5", **CALL}, headers=sw)
    await client.post("/v1/calls/c5/end", json={"duration_s": 0}, headers=sw)
    assert not await redis.hexists(keys.for_workspace(ws["id"]).ended, "c1")
    assert await (await client.post("/v1/calls/c1/end", json=end, headers=sw)).json() == first


async def test_a_call_never_seen_is_still_billed(client: Client, clock: ManualClock) -> None:
    """The archive lookup answers only calls it billed: an unknown call is billed as before."""
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await archive_pass(client)
    resp = await client.post("/v1/calls/ghost/end", json={"duration_s": 60, **CALL}, headers=sw)
    assert resp.status == 200
    body = await resp.json()
    assert body["unauthorized_call"] is True
    assert body["cost_micros"] == 200_000


async def test_top_up_and_adjustment_replays_after_the_row_moved_to_sql(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    ws = await new_workspace(client)
    topup = {"amount_usd": 25, "payment_method_id": "pm_card_visa"}
    headers = {**auth(ws["key"]), "Idempotency-Key": "t-1"}
    first = await client.post("/v1/wallet/topup", json=topup, headers=headers)
    assert first.status == 201
    adjust = {"amount_usd": "-1.5", "type": "adjustment", "description": "fix", "reference": "a1"}
    path = f"/v1/workspaces/{ws['id']}/adjustments"
    adjusted = await client.post(path, json=adjust, headers=PLATFORM)
    assert adjusted.status == 201
    await archive_pass(client)
    assert await redis.xlen(keys.for_workspace(ws["id"]).ledger) == 0
    again = await client.post("/v1/wallet/topup", json=topup, headers=headers)
    assert again.status == 201
    assert (await again.json())["id"] == (await first.json())["id"]
    replayed = await client.post(path, json=adjust, headers=PLATFORM)
    assert replayed.status == 200
    assert await replayed.json() == await adjusted.json()
    other = await client.post(path, json={**adjust, "amount_usd": "-2"}, headers=PLATFORM)
    assert other.status == 409
    assert (await other.json())["error"]["code"] == "idempotency_key_reused"
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 33_500_000
    assert len(await all_rows(client, ws["key"])) == 3

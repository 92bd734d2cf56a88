"""Spending alerts: budget thresholds once a month each, and a spike over the weekly average."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from gate.clock import ManualClock
from gate.store import keys
from tests.archive_fixtures import database_url, pg_database
from tests.conftest import auth, new_workspace
from tests.test_archive import Client, archive_pass, archive_redis, client, redis, settings
from tests.test_ledger import add_row

__all__ = ["archive_redis", "client", "database_url", "pg_database", "redis", "settings"]


def at(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


async def alerts(redis: Redis, workspace_id: str, kind: str) -> list[dict[str, str]]:
    found = []
    for _, raw in await redis.xrange(keys.for_workspace(workspace_id).events):
        f = {k.decode(): v.decode() for k, v in raw.items()}
        if f["type"] == kind:
            found.append({k[2:]: v for k, v in f.items() if k.startswith("d:")})
    return found


async def spend(
    client: Client, clock: ManualClock, ws: dict[str, Any], when: str, micros: int, kind: str
) -> None:
    ref = f"{kind}-{when}-{micros}"
    await add_row(client, clock, ws["id"], when, -micros, kind, ref=ref)
    await archive_pass(client)


async def test_thresholds_fire_once_per_month(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    clock.ms = at("2027-03-01T00:00:00")
    ws = await new_workspace(client)
    resp = await client.put(
        "/v1/wallet/spending-alerts", json={"monthly_budget_usd": "4"}, headers=auth(ws["key"])
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["thresholds_pct"] == [50, 80, 100]
    await spend(client, clock, ws, "2027-03-02T10:00:00", 1_900_000, "call")  # 47.5 %
    assert await alerts(redis, ws["id"], "wallet.spend_threshold") == []
    await spend(client, clock, ws, "2027-03-03T10:00:00", 100_000, "sms")  # 50 %
    await spend(client, clock, ws, "2027-03-04T10:00:00", 10_000, "sms")
    fired = await alerts(redis, ws["id"], "wallet.spend_threshold")
    assert [(a["month"], a["threshold_pct"]) for a in fired] == [("2027-03", "50")]
    assert fired[0]["spent_micros"] == "2000000" and fired[0]["budget_micros"] == "4000000"
    await spend(client, clock, ws, "2027-03-20T10:00:00", 3_000_000, "ai_agent")  # 127 %
    await spend(client, clock, ws, "2027-03-21T10:00:00", 1_000, "call")
    fired = await alerts(redis, ws["id"], "wallet.spend_threshold")
    assert [a["threshold_pct"] for a in fired] == ["50", "80", "100"]
    # A new month starts over.
    await spend(client, clock, ws, "2027-04-01T00:00:01", 2_100_000, "call")
    fired = await alerts(redis, ws["id"], "wallet.spend_threshold")
    assert [(a["month"], a["threshold_pct"]) for a in fired][3:] == [("2027-04", "50")]
    resp = await client.get("/v1/wallet/spending-alerts", headers=auth(ws["key"]))
    assert (await resp.json())["monthly_budget_micros"] == 4_000_000


async def test_a_spike_names_the_service_that_drove_it(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    clock.ms = at("2027-05-01T00:00:00")
    ws = await new_workspace(client)
    body = {"monthly_budget_usd": None, "spike_factor": 3}
    resp = await client.put("/v1/wallet/spending-alerts", json=body, headers=auth(ws["key"]))
    assert resp.status == 200
    for day in range(1, 8):  # a week of $1 a day of calls
        await spend(client, clock, ws, f"2027-05-0{day}T12:00:00", 1_000_000, "call")
    assert await alerts(redis, ws["id"], "wallet.spend_spike") == []
    await spend(client, clock, ws, "2027-05-08T09:00:00", 1_000_000, "call")
    await spend(client, clock, ws, "2027-05-08T10:00:00", 2_500_000, "ai_agent")  # $3.5 > 3x $1
    await spend(client, clock, ws, "2027-05-08T11:00:00", 500_000, "ai_agent")
    fired = await alerts(redis, ws["id"], "wallet.spend_spike")
    assert len(fired) == 1  # once a day
    assert fired[0]["service"] == "ai_agent"
    assert fired[0]["day"] == "2027-05-08"
    assert fired[0]["spent_micros"] == "3500000"
    assert fired[0]["trailing_avg_micros"] == "1000000"


async def test_bad_alert_settings_are_refused(client: Client) -> None:
    ws = await new_workspace(client)
    for body in (
        {"monthly_budget_usd": "0"},
        {"monthly_budget_usd": "-5"},
        {"thresholds_pct": []},
        {"thresholds_pct": [0]},
        {"spike_factor": 1},
        {"budget": 5},
    ):
        resp = await client.put("/v1/wallet/spending-alerts", json=body, headers=auth(ws["key"]))
        assert resp.status == 400, body
        assert (await resp.json())["error"]["code"] == "validation_error"

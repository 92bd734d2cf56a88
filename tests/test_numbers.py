"""Number rental: the first month at once, then every anniversary exactly once, from the wallet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from gate.api.http import NUMBERS
from gate.app import create_app
from gate.clock import ManualClock
from gate.settings import Settings
from gate.store import keys
from gate.store.redis_proc import RedisClusterProcs
from gate.wallet.numbers import add_months
from tests.conftest import PLATFORM, Client, auth, new_workspace
from tests.helpers import all_rows, wallet_json
from tests.test_calls import credit, set_balance

NUMBER = "+14155550199"


@pytest.fixture(autouse=True)
async def numbers_free(redis: Redis) -> AsyncIterator[None]:
    """Each test rents its numbers from a fresh pool: the session's Redis outlives the
    workspaces of earlier tests, which would hold them (a number has one tenant)."""
    async for key in redis.scan_iter(match=keys.number_owner("*")):
        await redis.delete(key)
    yield


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_anniversaries_clamp_to_the_end_of_short_months() -> None:
    jan31 = ms("2027-01-31T10:00:00")
    assert add_months(jan31, 1) == ms("2027-02-28T10:00:00")
    assert add_months(jan31, 2) == ms("2027-03-31T10:00:00")
    assert add_months(jan31, 13) == ms("2028-02-29T10:00:00")


async def rent(client: Client, ws: dict[str, Any], number: str = NUMBER) -> Any:
    return await client.post("/v1/numbers", json={"number": number}, headers=auth(ws["key"]))


async def test_renting_charges_the_first_month_and_lists_the_number(client: Client) -> None:
    ws = await new_workspace(client)
    resp = await rent(client, ws)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["months_paid"] == 1 and body["price_micros"] == 1_150_000
    assert (await wallet_json(client, ws["key"]))["balance_usd"] == 8.85
    row = (await all_rows(client, ws["key"], "type=number_rental"))[0]
    assert row["number"] == NUMBER and row["period"] == "1"
    listed = await (await client.get("/v1/numbers", headers=auth(ws["key"]))).json()
    assert [n["number"] for n in listed["data"]] == [NUMBER]
    assert (await rent(client, ws)).status == 409
    assert (await rent(client, ws, "4155550199")).status == 400
    agent_key = (await (await client.post(f"/v1/workspaces/{ws['id']}/keys", headers=PLATFORM,
                                          json={"role": "agent"})).json())["key"]  # fmt: skip
    resp = await client.post("/v1/numbers", json={"number": NUMBER}, headers=auth(agent_key))
    assert resp.status == 403


async def test_no_money_no_number(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client)
    await set_balance(client, ws, 1_000_000)
    resp = await rent(client, ws)
    assert resp.status == 402
    assert await redis.hlen(keys.for_workspace(ws["id"]).numbers) == 0


async def test_a_year_of_anniversaries_charges_each_month_exactly_once(
    client: Client, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    await credit(client, ws, 10_000_000)  # $20: enough for the 13 months
    rented = clock.now_ms()
    assert (await rent(client, ws)).status == 201
    numbers = client.server.app[NUMBERS]
    for month in range(1, 13):
        clock.advance((add_months(rented, month) - clock.now_ms()) / 1000 + 3600)
        await numbers.run_once()
        await numbers.run_once()  # a second process, or a retry after a crash: no double
    rows = await all_rows(client, ws["key"], "type=number_rental")
    assert sorted(int(r["period"]) for r in rows) == list(range(1, 14))
    assert sum(r["amount_micros"] for r in rows) == -13 * 1_150_000
    listed = (await (await client.get("/v1/numbers", headers=auth(ws["key"]))).json())["data"]
    assert listed[0]["months_paid"] == 13
    assert listed[0]["next_charge_at"] * 1000 == add_months(rented, 13)


async def test_a_failed_renewal_is_told_once_and_retried_daily(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    ws = await new_workspace(client)
    rented = clock.now_ms()
    assert (await rent(client, ws)).status == 201
    await credit(client, ws, -7_850_000)  # $1 left: not enough for the second month
    numbers = client.server.app[NUMBERS]
    clock.advance((add_months(rented, 1) - rented) / 1000 + 1)
    await numbers.run_once()
    listed = (await (await client.get("/v1/numbers", headers=auth(ws["key"]))).json())["data"]
    assert listed[0]["state"] == "renewal_failed" and listed[0]["months_paid"] == 1
    clock.advance(3600)
    await numbers.run_once()  # not due again before a day has passed
    events = await redis.xrange(keys.for_workspace(ws["id"]).events)
    failed = [e for _, e in events if e[b"type"] == b"number.renewal_failed"]
    assert len(failed) == 1
    await credit(client, ws, 5_000_000)
    clock.advance(86400)
    await numbers.run_once()
    listed = (await (await client.get("/v1/numbers", headers=auth(ws["key"]))).json())["data"]
    assert listed[0]["state"] == "active" and listed[0]["months_paid"] == 2
    assert listed[0]["next_charge_at"] * 1000 == add_months(rented, 2)


async def test_a_released_number_is_not_charged_again(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    rented = clock.now_ms()
    assert (await rent(client, ws)).status == 201
    resp = await client.delete(f"/v1/numbers/{NUMBER}", headers=auth(ws["key"]))
    assert resp.status == 200 and (await resp.json())["state"] == "released"
    assert (await client.delete(f"/v1/numbers/{NUMBER}", headers=auth(ws["key"]))).status == 404
    clock.advance((add_months(rented, 2) - rented) / 1000)
    await client.server.app[NUMBERS].run_once()
    assert len(await all_rows(client, ws["key"], "type=number_rental")) == 1


async def test_a_number_has_one_tenant(client: Client, redis: Redis) -> None:
    """Issue 20: the same number rented by two workspaces, both paying monthly."""
    x, y, z = [await new_workspace(client, n) for n in ("X", "Y", "Z")]
    assert (await rent(client, x)).status == 201
    taken = await rent(client, y)
    assert taken.status == 409, await taken.text()
    error = (await taken.json())["error"]
    assert error["code"] == "number_taken" and error["number"] == NUMBER
    assert "another number" in error["message"]
    assert (await wallet_json(client, y["key"]))["balance_micros"] == 10_000_000
    assert (await rent(client, x)).status == 409  # X's own repeat: invalid_state, still X's
    assert await redis.ttl(keys.number_owner(NUMBER)) == -1  # held while rented
    # A refused rental gives the claim back: Z has no money for it.
    await set_balance(client, z, 0)
    other = "+14155550198"
    assert (await rent(client, z, other)).status == 402
    assert await redis.get(keys.number_owner(other)) is None
    assert (await rent(client, y, other)).status == 201
    # Released by DELETE: then another workspace may rent it.
    resp = await client.delete(f"/v1/numbers/{NUMBER}", headers=auth(x["key"]))
    assert resp.status == 200, await resp.text()
    assert (await rent(client, y)).status == 201
    assert (await rent(client, x)).status == 409


async def test_racing_rentals_of_one_number_one_wins(client: Client) -> None:
    import asyncio

    workspaces = [await new_workspace(client, f"r{i}") for i in range(8)]
    answers = await asyncio.gather(*(rent(client, ws, "+14155550197") for ws in workspaces))
    assert sorted(a.status for a in answers) == [201] + [409] * 7
    charged = [ws for ws in workspaces if (await wallet_json(client, ws["key"]))["balance_micros"]
               < 10_000_000]  # fmt: skip
    assert len(charged) == 1


@pytest.mark.cluster
async def test_a_number_has_one_tenant_on_a_cluster(
    aiohttp_client: Any, redis_cluster: RedisClusterProcs, settings: Settings, clock: ManualClock
) -> None:
    client = await aiohttp_client(
        create_app(replace(settings, redis_url=redis_cluster.url), clock=clock)
    )
    number = f"+1415555{clock.now_ms() % 10_000:04d}"
    workspaces = [await new_workspace(client, f"c{i}") for i in range(4)]  # different slots
    answers = [await rent(client, ws, number) for ws in workspaces]
    assert [a.status for a in answers] == [201, 409, 409, 409]
    resp = await client.delete(f"/v1/numbers/{number}", headers=auth(workspaces[0]["key"]))
    assert resp.status == 200, await resp.text()
    assert (await rent(client, workspaces[3], number)).status == 201

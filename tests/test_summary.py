"""GET /v1/usage/summary: the month's spend per service, exact against the ledger."""

from __future__ import annotations

import csv
import io

from gate.clock import ManualClock
from tests.conftest import Client, auth, new_switch_key, new_workspace
from tests.helpers import all_rows

START = {"direction": "outbound", "from": "+14155550100", "to": "+14155550123"}


async def test_the_summary_adds_up_to_the_ledger(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    for n, (user, seconds) in enumerate([("alice", 90), ("bob", 30), ("alice", 6)]):
        body = START | {"call_id": f"c{n}", "user": user, "group": "sales"}
        assert (await client.post("/v1/calls", json=body, headers=sw)).status == 201
        clock.advance(seconds)
        await client.post(f"/v1/calls/c{n}/end", json={"duration_s": seconds}, headers=sw)
    await client.post(
        "/v1/charges",
        headers=sw,
        json={"charge_id": "m1", "service": "sms", "segments": 3, "user": "bob"},
    )
    await client.post("/v1/charges", headers=sw,
                      json={"charge_id": "f1", "service": "fax", "pages": 2})  # fmt: skip
    month = "2027-01"  # the ManualClock starts at 2027-01-15
    resp = await client.get(f"/v1/usage/summary?month={month}", headers=auth(ws["key"]))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    by = {s["service"]: s for s in body["services"]}
    assert by["voice"]["count"] == 3 and by["voice"]["billable_s"] == 90 + 60 + 60
    assert by["voice"]["spend_micros"] == 300_000 + 200_000 + 200_000
    assert by["sms"]["segments"] == 3 and by["fax"]["pages"] == 2
    rows = await all_rows(client, ws["key"])
    usage = sum(-r["amount_micros"] for r in rows if r["type"] != "recharge"
                and r["type"] != "adjustment")  # fmt: skip
    assert body["total_spend_micros"] == usage
    assert body["credits_micros"] == 10_000_000, "the signup credit"
    assert body["top_users"][0] == {"user": "alice", "spend_usd": 0.5, "spend_micros": 500_000,
                                    "count": 2}  # fmt: skip
    assert [g["group"] for g in body["top_groups"]] == ["sales"]
    text = await (await client.get(f"/v1/usage/summary?month={month}&format=csv",
                                   headers=auth(ws["key"]))).text()  # fmt: skip
    lines = list(csv.DictReader(io.StringIO(text)))
    assert lines[-1]["service"] == "total"
    assert lines[-1]["spend_usd"] == f"{usage / 1e6:.6f}"


async def test_bad_months_are_400(client: Client) -> None:
    ws = await new_workspace(client)
    for month in ("2027-13", "27-01", "2099-01", "x"):
        resp = await client.get(f"/v1/usage/summary?month={month}", headers=auth(ws["key"]))
        assert resp.status == 400, month
        assert (await resp.json())["error"]["field"] == "month"
    resp = await client.get("/v1/usage/summary?format=xml", headers=auth(ws["key"]))
    assert resp.status == 400

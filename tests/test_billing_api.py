"""What the billing page reads beyond the list: each usage row's cost and the credits that
paid it, one row by id with its service's details (also once archived), and the CSV's cost
columns (seed 001: Cost, Wallet Source, the side panel, the export)."""

from __future__ import annotations

import csv
import io

from gate.clock import ManualClock
from gate.history import ledger
from tests.conftest import PLATFORM, Client, auth, new_workspace
from tests.test_calls import call, switch_key
from tests.test_plans import end, plan_client, plan_workspace, usage_row  # noqa: F401


async def test_commitment_paid_usage_shows_its_cost_and_sources(
    plan_client: Client,  # noqa: F811
    clock: ManualClock,
) -> None:
    client = plan_client
    ws, sw = await plan_workspace(client)
    assert (await client.post("/v1/calls", json=call("v1"), headers=sw)).status == 201
    clock.advance(600)
    await end(client, sw, "v1", 600)  # $2: $1 of commitment, then $1 of universal money
    row = await usage_row(client, ws, "v1")
    assert row["amount_micros"] == -1_000_000  # what left the wallet...
    assert row["cost_micros"] == 2_000_000  # ...and what the call cost
    assert row["paid_from"] == [
        {"source": "commitment", "name": "calling", "usd": 1.0, "micros": 1_000_000},
        {"source": "universal", "usd": 1.0, "micros": 1_000_000},
    ]
    sms = {"charge_id": "s1", "service": "sms", "segments": 12, "to": "+442071234567",
           "message_id": "SM1", "status": "delivered"}  # fmt: skip
    resp = await client.post("/v1/charges", json=sms, headers=sw)
    assert resp.status == 201, await resp.text()
    row = await resp.json()
    assert row["cost_micros"] == 2 * 7900  # 10 segments from the allowance cost nothing
    assert row["paid_from"] == [
        {"source": "plan_allowance", "service": "sms", "units": 10, "unit": "segment"},
        {"source": "universal", "usd": 0.0158, "micros": 15_800},  # the call spent the $1
    ]
    # The same charge again with a later delivery status is the same charge, not a conflict.
    again = await client.post("/v1/charges", json=sms, headers=sw)
    assert again.status == 200

    resp = await client.get("/v1/usage/export", headers=auth(ws["key"]))
    rows = {r["reference"]: r for r in csv.DictReader(io.StringIO(await resp.text()))}
    assert (rows["v1"]["cost_usd"], rows["v1"]["commitment_usd"]) == ("2.000000", "1.000000")
    assert (rows["v1"]["universal_usd"], rows["v1"]["allowance_units"]) == ("1.000000", "0")
    assert (rows["s1"]["allowance_units"], rows["s1"]["cost_usd"]) == ("10", "0.015800")
    assert rows["s1"]["universal_usd"] == "0.015800"
    signup = next(r for r in rows.values() if r["type"] == "adjustment")
    assert signup["cost_usd"] == ""  # credits are not usage: no cost


async def test_one_transaction_with_its_details(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    body = call("c1") | {"to": "+442071234567"}
    assert (await client.post("/v1/calls", json=body, headers=sw)).status == 201
    clock.advance(90)
    resp = await client.post("/v1/calls/c1/end", json={"duration_s": 90}, headers=sw)
    assert resp.status == 200
    fax = {"charge_id": "f1", "service": "fax", "pages": 3, "from": "+14155550100",
           "to": "+33142685300", "status": "failed"}  # fmt: skip
    assert (await client.post("/v1/charges", json=fax, headers=sw)).status == 201
    rows = (await (await client.get("/v1/wallet/transactions", headers=auth(ws["key"]))).json())[
        "data"
    ]
    by_ref = {r["reference"]: r for r in rows}

    resp = await client.get(
        f"/v1/wallet/transactions/{by_ref['c1']['id']}", headers=auth(ws["key"])
    )
    assert resp.status == 200, await resp.text()
    one = await resp.json()
    assert {k: one[k] for k in by_ref["c1"]} == by_ref["c1"]  # the listed row, and more
    d = one["details"]
    assert (d["call_id"], d["direction"], d["to"], d["location"]) == (
        "c1", "outbound", "+442071234567", "London, GB")  # fmt: skip
    assert d["duration_s"] == 90 and d["billing_increment"]
    assert isinstance(d["rate_per_min_usd"], float)

    one = await (
        await client.get(f"/v1/wallet/transactions/{by_ref['f1']['id']}", headers=auth(ws["key"]))
    ).json()
    assert one["details"] == {"fax_id": "f1", "from": "+14155550100", "to": "+33142685300",
                              "direction": "outbound", "location": "Paris, FR", "pages": 3,
                              "rate_per_page_usd": one["details"]["rate_per_page_usd"],
                              "status": "failed", "fax_line": "+14155550100"}  # fmt: skip

    # Another workspace's row, a made-up id and a malformed one: 404 saying what to do.
    other = await new_workspace(client)
    for path, key in (
        (f"/v1/wallet/transactions/{by_ref['f1']['id']}", other["key"]),
        ("/v1/wallet/transactions/1-0", ws["key"]),
        ("/v1/wallet/transactions/nope", ws["key"]),
    ):
        resp = await client.get(path, headers=auth(key))
        assert resp.status == 404, path
        assert "GET /v1/wallet/transactions" in (await resp.json())["error"]["message"]


def test_csv_header_carries_cost_and_office() -> None:
    assert ledger.csv_header().rstrip().split(",")[-4:] == [
        "cost_usd", "allowance_units", "commitment_usd", "universal_usd"]  # fmt: skip
    assert ledger.csv_header(with_workspace=True).startswith("workspace,office,id,")
    assert PLATFORM  # the platform key stays the fixtures' one


async def test_the_end_of_a_call_carries_its_quality_and_an_agents_work(
    client: Client, clock: ManualClock
) -> None:
    """Seed 001's side panel: call quality; an AI agent's mode, skills, actions, sessions."""
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    assert (await client.post("/v1/calls", json=call("q1"), headers=sw)).status == 201
    body = call("ai1") | {"service": "ai_agent"}
    assert (await client.post("/v1/calls", json=body, headers=sw)).status == 201
    clock.advance(60)
    end = {"duration_s": 60, "quality_mos": 4.25}
    assert (await client.post("/v1/calls/q1/end", json=end, headers=sw)).status == 200
    end = {"duration_s": 60, "ai_mode": "digital", "skills": ["book_meeting", "faq"],
           "actions": 3, "sessions": 2}  # fmt: skip
    resp = await client.post("/v1/calls/ai1/end", json=end, headers=sw)
    assert resp.status == 200, await resp.text()
    again = await client.post("/v1/calls/ai1/end", json=end, headers=sw)
    assert again.status == 200 and await again.json() == await resp.json()  # still idempotent
    rows = await (await client.get("/v1/wallet/transactions", headers=auth(ws["key"]))).json()
    by_ref = {r["reference"]: r for r in rows["data"]}
    path = "/v1/wallet/transactions/"
    q1 = await (await client.get(path + by_ref["q1"]["id"], headers=auth(ws["key"]))).json()
    assert q1["details"]["call_quality"] == "4.2 MOS"
    ai = await (await client.get(path + by_ref["ai1"]["id"], headers=auth(ws["key"]))).json()
    wanted = {"mode": "Digital AI", "skills": ["book_meeting", "faq"], "actions": 3, "sessions": 2}
    assert {k: ai["details"][k] for k in wanted} == wanted
    # Out of range: a clear 400, nothing billed.
    bad = await client.post(
        "/v1/calls/zz/end", json={"duration_s": 5, "quality_mos": 9}, headers=sw
    )
    assert bad.status == 400
    assert "quality_mos" in (await bad.json())["error"]["message"]

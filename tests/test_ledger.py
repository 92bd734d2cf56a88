"""The transaction history: filters, limits, cursor pages, and the full CSV export."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest

from gate.api.http import CTX
from gate.clock import ManualClock
from gate.history import ledger
from gate.store.scripts import Code
from gate.wallet.service import post
from tests.conftest import Client, auth, new_workspace
from tests.helpers import all_rows


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


async def add_row(
    client: Client,
    clock: ManualClock,
    workspace_id: str,
    when: str,
    amount: int,
    kind: str,
    *,
    ref: str,
    description: str = "usage",
    **extra: str,
) -> None:
    """One ledger row at `when`, through the same script the API uses."""
    clock.ms = ms(when)
    posted = await post(
        client.app[CTX],
        workspace_id,
        now_ms=clock.now_ms(),
        amount_micros=amount,
        type=kind,
        description=description,
        reference=ref,
        floor="none",
        extra=list(extra.items()),
    )
    assert posted.code == Code.OK


@pytest.fixture
async def history(client: Client, clock: ManualClock) -> dict[str, Any]:
    """A workspace whose history spans three months, several services, users and groups."""
    clock.ms = ms("2027-01-15T08:00:00")
    ws = await new_workspace(client)  # signup credit +10.00, 2027-01-15
    wid = ws["id"]
    rows = [
        ("2027-01-20T10:00:00", -200_000, "call", {"user": "alice", "group": "sales"}),
        ("2027-01-31T23:59:59", -7_900, "sms", {"user": "bob", "group": "support"}),
        ("2027-02-01T00:00:00", 25_000_000, "recharge", {"source": "card"}),
        ("2027-02-10T00:00:00", -1_500_000, "fax", {"user": "alice", "group": "support"}),
        ("2027-02-10T12:30:00", -20_000, "mms", {"user": "alice", "group": "sales"}),
        ("2027-02-10T23:59:59", -890_000, "ai_agent", {"user": "carol", "group": "sales"}),
        ("2027-02-11T00:00:00", -1_150_000, "number_rental", {}),
        ("2027-02-28T18:00:00", 1_000_000, "refund", {"source": "operator"}),
        ("2027-03-01T09:00:00", -10_000, "chat", {"user": "bob", "group": "support"}),
        ("2027-03-02T09:00:00", -2_000_000, "adjustment", {"source": "operator"}),
    ]
    for i, (when, amount, kind, extra) in enumerate(rows):
        await add_row(client, clock, wid, when, amount, kind, ref=f"h{i}", **extra)
    return ws


async def types_of(client: Client, ws: dict[str, Any], query: str) -> list[str]:
    return [r["type"] for r in await all_rows(client, ws["key"], query)]


async def test_rows_show_everything(client: Client, history: dict[str, Any]) -> None:
    rows = await all_rows(client, history["key"])
    assert [r["type"] for r in rows] == [
        "adjustment",
        "chat",
        "refund",
        "number_rental",
        "ai_agent",
        "mms",
        "fax",
        "recharge",
        "sms",
        "call",
        "adjustment",
    ]
    running = 0
    for row in reversed(rows):
        running += row["amount_micros"]
        assert row["balance_after_micros"] == running
        assert row["balance_after_usd"] == running / 1_000_000
        assert row["amount_usd"] == row["amount_micros"] / 1_000_000
    assert rows[-1]["at"] == "2027-01-15T08:00:00.000Z"
    assert rows[-2]["user"] == "alice"
    assert rows[-2]["group"] == "sales"
    assert rows[-2]["reference"] == "h0"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("type=sms", ["sms"]),
        ("type=fax,sms", ["fax", "sms"]),
        ("type=adjustment", ["adjustment", "adjustment"]),
        ("service=messaging", ["chat", "mms", "sms"]),
        ("service=calling", ["call"]),
        ("service=ai_agent", ["ai_agent"]),
        ("service=numbers", ["number_rental"]),
        ("service=credits", ["adjustment", "refund", "recharge", "adjustment"]),
        ("service=messaging&type=sms", ["sms"]),
        ("service=fax&type=sms", []),
        ("month=2027-02", ["refund", "number_rental", "ai_agent", "mms", "fax", "recharge"]),
        ("month=2027-01", ["sms", "call", "adjustment"]),
        ("month=2026-12", []),
        ("from=2027-02-10&to=2027-02-10", ["ai_agent", "mms", "fax"]),  # the whole day
        ("from=2027-02-10T12:00:00Z&to=2027-02-11T00:00:00Z", ["ai_agent", "mms"]),
        (
            "from=2027-02-10T13:30:00%2B01:00",  # 12:30Z, inclusive
            ["adjustment", "chat", "refund", "number_rental", "ai_agent", "mms"],
        ),
        ("from=2027-03-01", ["adjustment", "chat"]),
        ("to=2027-01-20", ["call", "adjustment"]),
        ("to=1960-01-01", []),
        ("min_amount_usd=1&max_amount_usd=1.5", ["refund", "number_rental", "fax"]),
        ("min_amount_usd=20", ["recharge"]),
        ("max_amount_usd=0.01", ["chat", "sms"]),
        ("user=alice", ["mms", "fax", "call"]),
        ("group=support", ["chat", "fax", "sms"]),
        ("user=alice&group=sales", ["mms", "call"]),
        ("user=nobody", []),
        ("source=operator", ["adjustment", "refund"]),
        ("month=2027-02&service=messaging&user=alice", ["mms"]),
    ],
)
async def test_filters(
    client: Client, history: dict[str, Any], query: str, expected: list[str]
) -> None:
    assert await types_of(client, history, query) == expected


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("type=bogus", "type"),
        ("type=sms,", "type"),
        ("service=bogus", "service"),
        ("month=2027-13", "month"),
        ("month=Feb", "month"),
        ("month=2027-02&from=2027-02-01", "month"),
        ("from=yesterday", "from"),
        ("to=2027-02-30", "to"),
        ("from=2027-02-11&to=2027-02-10", "from"),
        ("to=9999-12-31", "to"),
        ("min_amount_usd=abc", "min_amount_usd"),
        ("min_amount_usd=-1", "min_amount_usd"),
        ("max_amount_usd=NaN", "max_amount_usd"),
        ("max_amount_usd=1.0000001", "max_amount_usd"),
        ("min_amount_usd=2&max_amount_usd=1", "min_amount_usd"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
    ],
)
async def test_bad_filters(client: Client, history: dict[str, Any], query: str, field: str) -> None:
    for path in ("/v1/wallet/transactions", "/v1/usage/export"):
        if path.endswith("export") and field == "limit":
            continue  # the export has no pages
        resp = await client.get(f"{path}?{query}", headers=auth(history["key"]))
        assert resp.status == 400, (path, query, await resp.text())
        error = (await resp.json())["error"]
        assert error["code"] == "validation_error"
        assert error.get("field") == field or field in error["message"]


async def test_limit_bounds(client: Client, history: dict[str, Any]) -> None:
    key = auth(history["key"])
    one = await (await client.get("/v1/wallet/transactions?limit=1", headers=key)).json()
    assert len(one["data"]) == 1
    assert one["next_cursor"] == one["data"][0]["id"]
    most = await (await client.get("/v1/wallet/transactions?limit=200", headers=key)).json()
    assert len(most["data"]) == 11
    assert most["next_cursor"] is None
    default = await (await client.get("/v1/wallet/transactions", headers=key)).json()
    assert default == most


async def test_cursor_pages_through_filters(client: Client, clock: ManualClock) -> None:
    clock.ms = ms("2027-05-01T00:00:00")
    ws = await new_workspace(client)
    kinds = ["sms", "call", "sms", "fax", "sms", "sms", "call"]
    for i in range(70):
        # several rows share a millisecond: the cursor must still be exact
        await add_row(
            client,
            clock,
            ws["id"],
            f"2027-05-0{1 + i // 20}T10:00:{i % 3:02d}",
            -(i + 1),
            kinds[i % len(kinds)],
            ref=f"c{i}",
            user="u1" if i % 2 else "u2",
        )
    for query in ("type=sms", "service=calling&user=u1", "from=2027-05-02&type=sms,call", ""):
        everything = await all_rows(client, ws["key"], query)
        paged: list[dict[str, Any]] = []
        cursor = None
        pages = 0
        while True:
            url = f"/v1/wallet/transactions?limit=4&{query}" + (
                f"&cursor={cursor}" if cursor else ""
            )
            page = await (await client.get(url, headers=auth(ws["key"]))).json()
            pages += 1
            assert len(page["data"]) <= 4
            paged += page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert cursor == page["data"][-1]["id"]
        assert paged == everything, query
        assert len({r["id"] for r in paged}) == len(paged)
        assert pages == max(1, -(-len(everything) // 4)), query
        ids = [r["id"] for r in paged]
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))), reverse=True)
    sms = await all_rows(client, ws["key"], "type=sms")
    assert len(sms) == 40


async def test_cursor_edge_cases(client: Client, history: dict[str, Any]) -> None:
    key = auth(history["key"])
    for cursor in ("0-0", "1-0", "9999999999999999-0"):
        resp = await client.get(f"/v1/wallet/transactions?cursor={cursor}", headers=key)
        assert resp.status == 200, await resp.text()
    first = await (await client.get("/v1/wallet/transactions?cursor=0-0", headers=key)).json()
    assert first == {"data": [], "next_cursor": None}
    beyond = await client.get("/v1/wallet/transactions?cursor=9999999999999999-0", headers=key)
    assert len((await beyond.json())["data"]) == 11
    for cursor in ("nope", "1-", "-1", "1-2-3", "12345678901234567-0", "1.5-0"):
        resp = await client.get(f"/v1/wallet/transactions?cursor={cursor}", headers=key)
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_cursor"


async def test_export_streams_every_row(client: Client, clock: ManualClock) -> None:
    clock.ms = ms("2027-06-01T00:00:00")
    ws = await new_workspace(client)
    for i in range(620):  # more than a page (200) and than one Redis batch (500)
        kind = "sms" if i % 3 else "call"
        extra = {"user": f"u{i % 4}"} if kind == "call" else {}
        await add_row(
            client,
            clock,
            ws["id"],
            f"2027-06-{1 + i // 100:02d}T12:{(i % 100) // 60:02d}:{i % 60:02d}",
            -(i + 1) * 1000,
            kind,
            ref=f"e{i}",
            description='Call to +1 555, "quoted"' if i == 7 else "usage",
            **extra,
        )
    clock.ms = ms("2027-07-04T15:00:00")  # the file is named after the app clock's day
    resp = await client.get("/v1/usage/export", headers=auth(ws["key"]))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert (
        resp.headers["Content-Disposition"] == 'attachment; filename="usage-history-2027-07-04.csv"'
    )
    text = await resp.text()
    assert text.startswith(ledger.csv_header())
    table = list(csv.reader(io.StringIO(text)))
    header, body = table[0], table[1:]
    assert tuple(header) == ledger.CSV_COLUMNS
    rows = await all_rows(client, ws["key"])
    assert len(body) == len(rows) == 621
    for line, row in zip(body, rows, strict=True):
        record = dict(zip(header, line, strict=True))
        assert record["id"] == row["id"]
        assert record["date"] == row["at"]
        assert record["type"] == row["type"]
        assert record["description"] == row["description"]
        assert record["amount_usd"] == ledger.usd_str(row["amount_micros"])
        assert record["balance_after_usd"] == ledger.usd_str(row["balance_after_micros"])
        assert record["reference"] == row["reference"]
        assert record["user"] == row.get("user", "")
    quoted = next(r for r in body if r[6] == "e7")
    assert quoted[3] == 'Call to +1 555, "quoted"'

    # The filters of the history apply to the export.
    for query in ("type=call", "type=call&user=u1", "from=2027-06-03&to=2027-06-04", "user=x"):
        resp = await client.get(f"/v1/usage/export?{query}", headers=auth(ws["key"]))
        lines = list(csv.reader(io.StringIO(await resp.text())))[1:]
        expected = await all_rows(client, ws["key"], query)
        assert [line[0] for line in lines] == [r["id"] for r in expected], query
    calls = await all_rows(client, ws["key"], "type=call")
    assert len(calls) == 207


async def test_export_of_an_empty_selection_is_just_the_header(
    client: Client, history: dict[str, Any]
) -> None:
    resp = await client.get("/v1/usage/export?month=2020-01", headers=auth(history["key"]))
    assert resp.status == 200
    assert await resp.text() == ledger.csv_header()


async def test_usage_details_are_typed(client: Client, clock: ManualClock) -> None:
    ws = await new_workspace(client)
    details = {
        "user": "alice",
        "from": "+15550001",
        "to": "+15550002",
        "direction": "outbound",
        "duration_s": "65",
        "billable_s": "66",
        "rate_micros": "200000",
        "connect_fee_micros": "1000",
        "leak_s": "5",
        "increment": "60/6",
        "hangup_cause": "NORMAL_CLEARING",
        "segments": "",  # an empty detail stays text instead of breaking the history
    }
    await add_row(
        client, clock, ws["id"], "2027-01-15T09:00:00", -221_000, "call", ref="t1", **details
    )
    [row] = await all_rows(client, ws["key"], "type=call")
    assert row["duration_s"] == 65
    assert row["billable_s"] == 66
    assert row["leak_s"] == 5
    assert (row["rate_micros"], row["rate_per_min_usd"]) == (200_000, 0.2)
    assert (row["connect_fee_micros"], row["connect_fee_usd"]) == (1000, 0.001)
    assert row["increment"] == "60/6"
    assert row["hangup_cause"] == "NORMAL_CLEARING"
    assert row["segments"] == ""
    resp = await client.get("/v1/usage/export?type=call", headers=auth(ws["key"]))
    [header, line] = list(csv.reader(io.StringIO(await resp.text())))
    record = dict(zip(header, line, strict=True))
    assert record["duration_s"] == "65"
    assert record["rate_per_min_usd"] == "0.200000"
    assert record["increment"] == "60/6"
    assert record["direction"] == "outbound"
    assert record["from"] == "'+15550001"  # a leading + would run as a formula (OWASP)

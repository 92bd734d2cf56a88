"""The history at scale: a big archived export in flat memory, and the seam under writes."""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import random
import time
from decimal import Decimal
from typing import Any

import pytest

from gate.api.http import CTX
from gate.clock import ManualClock
from gate.history import ledger
from gate.history.archive import Archive
from gate.history.ledger import Filters, Row
from tests.archive_fixtures import database_url, pg_database
from tests.conftest import auth, new_workspace
from tests.helpers import all_rows
from tests.test_archive import (
    Client,
    archive_pass,
    archive_redis,
    client,
    filled_more,
    redis,
    settings,
)

__all__ = ["archive_redis", "client", "database_url", "pg_database", "redis", "settings"]


async def seed(archive: Archive, workspace_id: str, after: Row, n: int) -> None:
    """n synthetic call rows straight into the archive, after `after`, netting to zero."""
    balance = after.balance_after_micros
    at_ms = after.at_ms + 1
    batch: list[Row] = []
    for i in range(n):
        amount = -200_000 if i % 2 == 0 else 200_000
        if i == n - 1 and n % 2:
            amount = 0
        balance += amount
        batch.append(
            Row(
                id=f"{at_ms + i // 4}-{i % 4}",
                at_ms=at_ms + i // 4,
                type="call",
                description=f"Call to +1555{i:07d}",
                amount_micros=amount,
                balance_after_micros=balance,
                reference=f"call-{i}",
                extra={
                    "user": f"user{i % 50}",
                    "group": "sales",
                    "from": "+15550000000",
                    "to": f"+1555{i:07d}",
                    "direction": "outbound",
                    "duration_s": "60",
                    "source": "universal",
                },
            )
        )
        if len(batch) == 10_000:
            await archive.append(workspace_id, batch, 0)
            batch = []
    await archive.append(workspace_id, batch, 0)


def rss_kb() -> int:
    """This process's resident memory now (VmRSS), in kB."""
    with open("/proc/self/status") as status:
        return int(next(x for x in status if x.startswith("VmRSS:")).split()[1])


async def export_measured(client: Client, workspace_id: str) -> tuple[int, int, int, float]:
    """Stream the whole export as the HTTP route and `gate export` do, measuring as it goes:
    (rows, sum of the amounts in micros, peak RSS growth in kB, seconds)."""
    ctx = client.app[CTX]
    gc.collect()
    before = peak = rss_kb()
    rows = total = 0
    started = time.perf_counter()
    header = True
    async for chunk in ledger.csv_chunks(ctx.client, workspace_id, Filters(), ctx.archive):
        for line in csv.reader(io.StringIO(chunk, newline="")):
            if header:
                header = False
                continue
            rows += 1
            total += round(Decimal(line[4]) * 1_000_000)
        peak = max(peak, rss_kb())
    return rows, total, peak - before, time.perf_counter() - started


@pytest.mark.timeout(300)
async def test_a_big_export_streams_in_flat_memory(client: Client) -> None:
    n = 60_000
    archive = client.app[CTX].archive
    assert archive is not None
    ws = await new_workspace(client)
    await archive_pass(client)
    [signup] = [r async for r in archive.scan_oldest_first(ws["id"], None)]
    await seed(archive, ws["id"], signup, n)
    rows, total, growth_kb, seconds = await export_measured(client, ws["id"])
    assert rows == n + 1
    assert total == 10_000_000  # the signup credit; the calls net to zero, to the micro
    print(f"export of {rows} rows: {rows / seconds:,.0f} rows/s, RSS growth {growth_kb} kB")
    # Held in memory at once, 60,000 rows would take well over 60 MB; streamed, a batch.
    assert growth_kb < 20_000, f"RSS grew {growth_kb} kB while exporting {rows} rows"


async def test_the_seam_holds_while_rows_arrive_and_move(
    client: Client, clock: ManualClock
) -> None:
    """Writers add rows and the archiver moves them while a reader pages: exact pages."""
    ws = await new_workspace(client)
    await filled_more(client, clock, ws, 60, tag="pre")
    stop = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            await filled_more(client, clock, ws, 2, tag=f"w{i}-")
            i += 1
            await asyncio.sleep(0)

    async def archiver() -> None:
        while not stop.is_set():
            await archive_pass(client)
            await asyncio.sleep(random.random() / 100)

    tasks = [asyncio.create_task(writer()), asyncio.create_task(archiver())]
    try:
        paged: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            url = "/v1/wallet/transactions?limit=3" + (f"&cursor={cursor}" if cursor else "")
            page = await (await client.get(url, headers=auth(ws["key"]))).json()
            paged += page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    await archive_pass(client)
    top = tuple(map(int, paged[0]["id"].split("-")))
    expected = [
        r for r in await all_rows(client, ws["key"]) if tuple(map(int, r["id"].split("-"))) <= top
    ]
    assert len(expected) >= 61
    assert [r["id"] for r in paged] == [r["id"] for r in expected]
    assert paged == expected

"""`python -m loadtest.archive_bench`: the ledger archive at scale, measured.

Builds one workspace with a long call history (default 1,000,000 rows) in a private Redis,
measures Redis bytes per ledger row, archives it all into SQL (SQLite and/or PostgreSQL),
measures Redis memory after the trim, the export's speed and memory, and the latency of
history queries across the seam. Prints one JSON object per database.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from gate.clock import ManualClock
from gate.context import Context
from gate.history import ledger
from gate.history.archive import Archive
from gate.history.archiver import Archiver
from gate.history.ledger import Filters
from gate.settings import Settings
from gate.store import keys
from gate.store.redis_client import connect
from gate.store.redis_proc import RedisServer
from gate.store.scripts import Scripts
from gate.tenancy.workspaces import Workspaces

START_MS = 1_800_000_000_000


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        return int(next(x for x in status if x.startswith("VmRSS:")).split()[1])


def call_row(i: int, balance: int) -> tuple[int, list[str | int]]:
    """The fields lua/_call.lua writes for an ended call (one of 50 users, 1,000 numbers)."""
    amount = -200_000 if i % 2 == 0 else 200_000
    balance += amount
    fields: list[str | int] = [
        "type", "call", "desc", f"Call outbound +1555{i % 1000:07d}", "amount", amount,
        "balance", balance, "ref", f"call-{i:09d}", "user", f"user{i % 50}", "group", "sales",
        "from", "+15550000000", "to", f"+1555{i % 1000:07d}", "direction", "outbound",
        "duration_s", 57, "billable_s", 60, "rate_micros", 200_000, "increment", "60/6",
        "connect_fee_micros", 0, "source", "universal", "hangup_cause", "NORMAL_CLEARING",
    ]  # fmt: skip
    return balance, fields


async def fill(ctx: Context, workspace_id: str, rows: int, signup: int) -> None:
    stream = keys.for_workspace(workspace_id).ledger
    balance = signup
    done = 0
    while done < rows:
        async with ctx.client.pipeline(transaction=False) as pipe:
            for i in range(done, min(done + 2000, rows)):
                balance, fields = call_row(i, balance)
                # 10 rows per ms, as a busy workspace writes them
                pipe.xadd(stream, dict(zip(fields[::2], fields[1::2], strict=True)),
                          id=f"{START_MS + 1000 + i // 10}-{i % 10}")  # fmt: skip
            await pipe.execute()
        done = min(done + 2000, rows)
    await ctx.client.hset(keys.for_workspace(workspace_id).wallet, "balance", balance)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def bench(database_url: str, rows: int, redis_url: str) -> dict[str, Any]:
    client = await connect(redis_url)
    await client.flushall()
    scripts = Scripts(client)
    await scripts.load()
    clock = ManualClock(START_MS)
    archive = await Archive.open(database_url)
    settings = Settings(redis_url=redis_url, database_url=database_url)
    ctx = Context(client, scripts, clock, settings, archive=archive)
    created = await Workspaces(ctx).create("bench", None)
    wid = created.id
    stream = keys.for_workspace(wid).ledger
    result: dict[str, Any] = {"database": archive.dialect, "rows": rows}
    used_before = int((await client.info("memory"))["used_memory"])
    await fill(ctx, wid, rows, 10_000_000)
    used_full = int((await client.info("memory"))["used_memory"])
    stream_bytes = int(await client.memory_usage(stream, samples=0) or 0)
    result["redis_bytes_per_row_stream"] = round(stream_bytes / (rows + 1), 1)
    result["redis_used_memory_growth_mb"] = round((used_full - used_before) / 2**20, 1)
    # Archive everything; the trim keeps the default window (10,000 rows / 7 days).
    clock.ms = START_MS + 1000 + rows // 10 + 1000
    archiver = Archiver(ctx, archive, batch=5000)
    started = time.perf_counter()
    done = await archiver.run_once()
    seconds = time.perf_counter() - started
    result["archive_rows_per_s"] = round(done.copied / seconds)
    result["redis_rows_after_trim"] = int(await client.xlen(stream))
    result["redis_stream_bytes_after_trim"] = int(await client.memory_usage(stream, samples=0) or 0)
    result["redis_used_memory_after_mb"] = round(
        int((await client.info("memory"))["used_memory"]) / 2**20, 1
    )
    if archive.dialect == "postgresql":
        # What autovacuum does after a bulk load anyway; without it the planner has no
        # statistics for a table that went from empty to a million rows a minute ago.
        async with archive.engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE ledger_rows")
    # Export: every row, streamed, counted, RSS watched.
    gc.collect()
    before = peak = rss_kb()
    count = 0
    started = time.perf_counter()
    async for chunk in ledger.csv_chunks(client, wid, Filters(), archive):
        count += chunk.count("\n")
        peak = max(peak, rss_kb())
    seconds = time.perf_counter() - started
    result["export_rows"] = count - 1
    result["export_rows_per_s"] = round((count - 1) / seconds)
    result["export_rss_growth_mb"] = round((peak - before) / 1024, 1)
    # Queries: first pages, deep pages and filters, across the seam.
    ids = [f"{START_MS + 1000 + i // 10}-{i % 10}" for i in range(0, rows, max(rows // 500, 1))]
    shapes: dict[str, Any] = {
        "first page": lambda: (Filters(), None),
        "deep page": lambda: (Filters(), random.choice(ids)),
        "type=call&user": lambda: (
            Filters(types=frozenset({"call"}), user=f"user{random.randrange(50)}"),
            random.choice(ids),
        ),
        "number": lambda: (Filters(number=f"+1555{random.randrange(1000):07d}"), None),
        "date range": lambda: (
            Filters(start_ms=START_MS + 1000 + random.randrange(rows // 10), end_ms=None),
            None,
        ),
    }
    latencies: dict[str, dict[str, float]] = {}
    for name, make in shapes.items():
        times: list[float] = []
        for _ in range(100):
            filters, cursor = make()
            t0 = time.perf_counter()
            await ledger.page(client, wid, filters, 50, cursor, archive)
            times.append((time.perf_counter() - t0) * 1000)
        latencies[name] = {
            "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(pct(times, 0.99), 2),
        }
    result["query_latency"] = latencies
    await archive.close()
    await client.aclose()
    return result


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer.start(Path(tmp) / "redis", appendonly=False)
        try:
            for db in args.database:
                if db == "sqlite":
                    url = f"sqlite:///{tmp}/ledger.sqlite3"
                    print(json.dumps(await bench(url, args.rows, server.url)), flush=True)
                    continue
                admin = await asyncpg.connect(args.pg)
                name = f"gate_bench_{secrets.token_hex(4)}"
                await admin.execute(f'CREATE DATABASE "{name}"')
                try:
                    url = args.pg.rsplit("/", 1)[0] + "/" + name
                    print(json.dumps(await bench(url, args.rows, server.url)), flush=True)
                finally:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    await admin.close()
        finally:
            server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.archive_bench", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--database", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

"""The ledger archive: exactly-once copy into SQL, trimming, the seam, filters, `gate check`.

Every test runs twice: on an embedded SQLite file and on the machine's PostgreSQL (a fresh
database per test run). The archive tests use their own redis-server, flushed before each
test, so the archiver sees only the test's own workspaces.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from redis.asyncio import Redis
from sqlalchemy import update

from gate.api.http import CTX
from gate.api.ops import ARCHIVER
from gate.app import create_app
from gate.clock import ManualClock
from gate.history.archive import Archive
from gate.history.archiver import Archiver, Pass
from gate.history.check import check_all
from gate.history.schema import ledger_rows, metadata
from gate.settings import Settings
from gate.store import keys
from gate.store.redis_proc import RedisServer
from tests.archive_fixtures import database_url, pg_database
from tests.conftest import PLATFORM, auth, new_workspace
from tests.helpers import all_rows
from tests.test_ledger import add_row

__all__ = ["database_url", "pg_database"]

Client = TestClient  # type: ignore[type-arg]
_REPO = str(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def archive_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer.start(tmp_path_factory.mktemp("archive-redis"), appendonly=False) as server:
        yield server


@pytest.fixture
async def redis(archive_redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(archive_redis.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def settings(archive_redis: RedisServer, database_url: str) -> Settings:
    return Settings(
        redis_url=archive_redis.url,
        platform_key="test-platform-key-0123456789",
        auth_cache_s=0.0,
        database_url=database_url,
        ledger_keep_s=0,
        ledger_keep_rows=0,
        archive_interval_s=3600,  # the tests drive the passes
        default_plan="none",  # rows counted here: no plan_cycle row at signup
    )


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[Client]],
    settings: Settings,
    clock: ManualClock,
    redis: Redis,
) -> AsyncIterator[Client]:
    """An app with the archive on; after the test, `gate check` across Redis + archive."""
    test_client = await aiohttp_client(create_app(settings, clock=clock))
    yield test_client
    problems, _ = await check_all(redis, archive=test_client.app[CTX].archive)
    assert not problems, problems


def archiver(client: Client) -> Archiver:
    return client.app[ARCHIVER]


async def archive_pass(client: Client) -> Pass:
    return await archiver(client).run_once()


async def filled(client: Client, clock: ManualClock, n: int) -> dict[str, Any]:
    """A workspace with its signup row and n usage rows of every kind, a few per ms."""
    ws = await new_workspace(client)
    kinds = ["call", "sms", "call", "ai_agent", "recharge", "fax", "adjustment"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        extra: dict[str, str] = {}
        if kind in ("call", "ai_agent"):
            extra = {
                "user": f"u{i % 3}",
                "group": "sales" if i % 2 else "support",
                "from": f"+1555000{i % 5}",
                "to": f"+4420000{i % 4}",
                "direction": "inbound" if i % 3 == 0 else "outbound",
                "source": "plan+universal" if i % 4 == 0 else "universal",
            }
        elif kind == "sms":
            extra = {"contact": f"c{i % 2}", "user": "u1", "source": "universal"}
        amount = 1_000_000 if kind == "recharge" else -(1000 + i)
        clock.ms += 1 if i % 3 else 0  # several rows share a millisecond
        await add_row(client, clock, ws["id"], _iso(clock.ms), amount, kind, ref=f"r{i}", **extra)
    return ws


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None).isoformat()


async def test_migrations_build_exactly_the_tables_the_code_queries(client: Client) -> None:
    archive = client.app[CTX].archive
    assert archive is not None
    async with archive.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert diff == []


async def test_every_row_is_copied_once_then_trimmed(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    ws = await filled(client, clock, 60)
    stream = keys.for_workspace(ws["id"]).ledger
    before = await all_rows(client, ws["key"])
    export_before = await (await client.get("/v1/usage/export", headers=auth(ws["key"]))).text()
    assert len(before) == 61
    done = await archive_pass(client)
    assert done.copied == 61
    assert done.lag_rows == 61
    assert await redis.xlen(stream) == 0  # keep window 0: everything archived leaves Redis
    again = await archive_pass(client)
    assert (again.copied, again.lag_rows, again.lag_s) == (0, 0, 0.0)
    # The API shows the same rows, byte for byte, from the archive.
    assert await all_rows(client, ws["key"]) == before
    assert await (await client.get("/v1/usage/export", headers=auth(ws["key"]))).text() == (
        export_before
    )
    # New rows continue the running sums across the seam.
    await add_row(client, clock, ws["id"], _iso(clock.ms + 5), -7, "sms", ref="late")
    rows = await all_rows(client, ws["key"])
    assert len(rows) == 62
    assert rows[0]["balance_after_micros"] == before[0]["balance_after_micros"] - 7


async def test_the_recent_window_stays_in_redis(
    make_window: Callable[..., Awaitable[Client]], clock: ManualClock, redis: Redis
) -> None:
    client = await make_window(ledger_keep_rows=10, ledger_keep_s=3600)
    ws = await filled(client, clock, 40)
    stream = keys.for_workspace(ws["id"]).ledger
    await archive_pass(client)
    assert await redis.xlen(stream) == 10  # the row window
    clock.advance(7200)  # past the time window: the quiet pass trims the rest
    archiver(client).status.passes = 0
    await archive_pass(client)
    assert await redis.xlen(stream) == 0
    assert len(await all_rows(client, ws["key"])) == 41


@pytest.fixture
async def make_window(
    aiohttp_client: Callable[..., Awaitable[Client]],
    settings: Settings,
    clock: ManualClock,
    redis: Redis,
) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    from dataclasses import replace

    made: list[Client] = []

    async def make(**overrides: Any) -> Client:
        c = await aiohttp_client(create_app(replace(settings, **overrides), clock=clock))
        made.append(c)
        return c

    yield make
    for c in made:
        problems, _ = await check_all(redis, archive=c.app[CTX].archive)
        assert not problems, problems


async def test_pages_cross_the_seam_with_no_gap_and_no_double(
    make_window: Callable[..., Awaitable[Client]], clock: ManualClock
) -> None:
    client = await make_window(ledger_keep_rows=15, ledger_keep_s=10**7)
    ws = await filled(client, clock, 30)
    await archive_pass(client)  # 31 archived, the newest 15 of them still in Redis too
    await filled_more(client, clock, ws, 12)  # 12 only in Redis
    everything = await all_rows(client, ws["key"])
    assert len(everything) == 43
    assert len({r["id"] for r in everything}) == 43
    ids = [tuple(map(int, r["id"].split("-"))) for r in everything]
    assert ids == sorted(ids, reverse=True)
    sums = [r["balance_after_micros"] for r in everything]
    for newer, older, row in zip(sums, sums[1:], everything, strict=False):
        assert newer - row["amount_micros"] == older  # the running sum holds at every row
    # Page by 4 while rows arrive and move to SQL between pages: the cursor stays exact.
    paged: list[dict[str, Any]] = []
    cursor: str | None = None
    turn = 0
    while True:
        url = "/v1/wallet/transactions?limit=4" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=auth(ws["key"]))).json()
        paged += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        turn += 1
        if turn % 2:
            await filled_more(client, clock, ws, 3, tag=f"t{turn}")
        else:
            await archive_pass(client)
    assert paged == everything


async def filled_more(
    client: Client, clock: ManualClock, ws: dict[str, Any], n: int, tag: str = "m"
) -> None:
    for i in range(n):
        clock.ms += 1
        await add_row(client, clock, ws["id"], _iso(clock.ms), -(i + 1), "sms", ref=f"{tag}{i}")


FILTERS = [
    "",
    "type=call",
    "service=messaging",
    "type=call,ai_agent&user=u1",
    "group=sales",
    "direction=inbound",
    "direction=outbound&type=ai_agent",
    "number=%2B15550003",
    "number=%2B44200001",
    "contact=c1",
    "contact=u2",
    "contact=sales",
    "wallet_source=plan",
    "source=universal",
    "min_amount_usd=0.001030",
    "max_amount_usd=0.001020",
    "min_amount_usd=0.001&max_amount_usd=0.00102",
    "from=2027-01-15T08:00:00.010Z",
    "to=2027-01-15T08:00:00.020Z",
    "month=2027-01",
    "month=2027-02",
    "user=nobody",
    "contact=%25",
    "wallet_source=_",
]


async def test_every_filter_gives_the_same_rows_from_sql_as_from_redis(
    client: Client, clock: ManualClock
) -> None:
    clock.ms = 1_800_000_000_000
    ws = await filled(client, clock, 70)
    from_redis = {q: await all_rows(client, ws["key"], q) for q in FILTERS}
    assert len(from_redis["number=%2B15550003"]) > 0
    assert len(from_redis["contact=c1"]) > 0
    assert len(from_redis["direction=inbound"]) > 0
    assert len(from_redis["wallet_source=plan"]) > 0
    assert from_redis["contact=%25"] == from_redis["wallet_source=_"] == []
    await archive_pass(client)
    for query, expected in from_redis.items():
        assert await all_rows(client, ws["key"], query) == expected, query
        resp = await client.get(f"/v1/usage/export?{query}", headers=auth(ws["key"]))
        lines = list(csv.reader(io.StringIO(await resp.text(), newline="")))[1:]
        assert [line[0] for line in lines] == [r["id"] for r in expected], query


async def test_check_finds_a_broken_archived_row(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    ws = await filled(client, clock, 10)
    await archive_pass(client)
    archive = client.app[CTX].archive
    assert archive is not None
    assert await check_all(redis, [ws["id"]], archive) == ([], 1)
    # Without the archive, Redis alone no longer adds up: the check needs both.
    problems, _ = await check_all(redis, [ws["id"]])
    assert problems
    async with archive.engine.begin() as conn:
        await conn.execute(
            update(ledger_rows)
            .where(ledger_rows.c.workspace_id == ws["id"], ledger_rows.c.reference == "r3")
            .values(amount_micros=ledger_rows.c.amount_micros - 1)
        )
    problems, _ = await check_all(redis, [ws["id"]], archive)
    assert any("running sum" in p for p in problems)
    async with archive.engine.begin() as conn:  # put it back for the after-test check
        await conn.execute(
            update(ledger_rows)
            .where(ledger_rows.c.workspace_id == ws["id"], ledger_rows.c.reference == "r3")
            .values(amount_micros=ledger_rows.c.amount_micros + 1)
        )


async def test_readyz_and_metrics_show_the_lag(client: Client, clock: ManualClock) -> None:
    ws = await filled(client, clock, 5)
    clock.advance(30)
    done = await archive_pass(client)
    assert done.lag_rows == 6
    assert done.lag_s >= 30
    body = await (await client.get("/readyz")).json()
    assert body["archive"]["lag_rows"] == 6
    assert body["archive"]["lag_s"] >= 30
    assert body["archive"]["database"] in ("sqlite", "postgresql")
    metrics = await (await client.get("/metrics")).text()
    assert "gate_archive_lag_seconds" in metrics
    assert "gate_archive_lag_rows 6.0" in metrics
    assert ws


_KILLABLE = """
import asyncio, sys, time
from sqlalchemy import event
from gate.clock import ManualClock
from gate.context import Context
from gate.history.archive import Archive
from gate.history.archiver import Archiver
from gate.settings import Settings
from gate.store.redis_client import connect
from gate.store.scripts import Scripts

async def main():
    redis = await connect(sys.argv[1])
    scripts = Scripts(redis)
    await scripts.load()
    archive = await Archive.open(sys.argv[2])
    # Linger between each batch's INSERT and its COMMIT, so the kill lands mid-transaction.
    event.listen(archive.engine.sync_engine, "commit", lambda conn: time.sleep(0.01))
    settings = Settings(redis_url=sys.argv[1], ledger_keep_s=0, ledger_keep_rows=0)
    ctx = Context(redis, scripts, ManualClock(int(sys.argv[3])), settings, archive=archive)
    archiver = Archiver(ctx, archive, batch=7)
    print("ready", flush=True)
    while True:
        await archiver.run_once()

asyncio.run(main())
"""


async def test_an_archiver_killed_mid_batch_loses_and_doubles_nothing(
    client: Client, clock: ManualClock, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    workspaces = [await filled(client, clock, 150) for _ in range(3)]
    expected = {ws["id"]: await all_rows(client, ws["key"]) for ws in workspaces}
    script = tmp_path / "killable.py"
    script.write_text(_KILLABLE)
    env = {**os.environ, "PYTHONPATH": _REPO}
    assert settings.database_url and settings.redis_url
    for delay in (0.1, 0.2, 0.3):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), settings.redis_url, settings.database_url,
            str(clock.ms), env=env, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        await asyncio.sleep(delay)
        proc.send_signal(signal.SIGKILL)  # no clean-up: mid-transaction or mid-trim
        await proc.wait()
        # More rows arrive while the archiver is down.
        await filled_more(client, clock, workspaces[0], 5, tag=f"k{delay}")
    expected[workspaces[0]["id"]] = await all_rows(client, workspaces[0]["key"])
    archive = client.app[CTX].archive
    assert archive is not None
    # The killed archivers got part of the way: the restart finishes the job.
    copied_before = 0
    for workspace_id in expected:
        copied_before += len([r async for r in archive.scan_oldest_first(workspace_id, None)])
    total = sum(len(rows) for rows in expected.values())
    print(f"killed archivers copied {copied_before} of {total} rows")
    assert 0 < copied_before < total - 50
    done = await archive_pass(client)
    assert done.copied == total - copied_before
    for ws in workspaces:
        stored = [r async for r in archive.scan_oldest_first(ws["id"], None)]
        ids = [r.id for r in stored]
        assert len(ids) == len(set(ids)) == len(expected[ws["id"]])
        assert await all_rows(client, ws["key"]) == expected[ws["id"]]
        assert await redis.xlen(keys.for_workspace(ws["id"]).ledger) == 0
    assert PLATFORM


async def test_archive_urls() -> None:
    from gate.history.archive import ArchiveURLError, engine_url

    assert engine_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert engine_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert engine_url("sqlite:///var/x.sqlite3") == "sqlite+aiosqlite:///var/x.sqlite3"
    with pytest.raises(ArchiveURLError):
        engine_url("mysql://u@h/db")
    assert Archive


async def test_gate_export_and_check_read_the_archive_too(
    client: Client, clock: ManualClock, settings: Settings, tmp_path: Path
) -> None:
    from tests.test_cli import clean_env, gate

    ws = await filled(client, clock, 30)
    await archive_pass(client)
    await filled_more(client, clock, ws, 4)  # the newest rows only in Redis
    assert settings.redis_url and settings.database_url
    env = clean_env(GATE_REDIS_URL=settings.redis_url, GATE_DATABASE_URL=settings.database_url)
    out = tmp_path / "calls.csv"
    done = await asyncio.to_thread(
        gate, "export", ws["id"], "-o", str(out), "--filter", "type=call", env=env
    )
    assert done.returncode == 0, done.stderr
    resp = await client.get("/v1/usage/export?type=call", headers=auth(ws["key"]))
    assert await asyncio.to_thread(out.read_text, encoding="utf-8") == await resp.text()
    done = await asyncio.to_thread(gate, "export", ws["id"], env=env)
    everything = await (await client.get("/v1/usage/export", headers=auth(ws["key"]))).text()
    assert done.stdout == everything
    assert len(everything.splitlines()) == 36  # header + signup + 30 + 4
    for bad, named in ((("--filter", "office=x"), "office"), (("--filter", "to=never"), "to")):
        done = await asyncio.to_thread(gate, "export", ws["id"], *bad, env=env)
        assert done.returncode == 1
        assert named in done.stderr.splitlines()[-1]
        assert "Traceback" not in done.stderr
    done = await asyncio.to_thread(gate, "check", ws["id"], env=env)
    assert done.returncode == 0, done.stdout
    assert "all invariants hold" in done.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATE_DATABASE_URL", "mysql://u:secret@h/db"),
        ("GATE_LEDGER_KEEP_ROWS", "-1"),
        ("GATE_LEDGER_KEEP_S", "ten"),
        ("GATE_ARCHIVE_INTERVAL_S", "0"),
    ],
)
def test_bad_archive_settings_name_the_variable(variable: str, value: str) -> None:
    from gate.settings import SettingsError, load

    with pytest.raises(SettingsError) as err:
        load({variable: value})
    assert str(err.value).startswith(variable)
    assert "secret" not in str(err.value)  # a database URL may carry a password


def test_archive_settings_are_read() -> None:
    from gate.settings import load

    loaded = load(
        {
            "GATE_DATABASE_URL": "postgresql://gate@db:5432/gate",
            "GATE_LEDGER_KEEP_S": "3600",
            "GATE_LEDGER_KEEP_ROWS": "500",
            "GATE_ARCHIVE_INTERVAL_S": "0.5",
        }
    )
    assert loaded.database_url == "postgresql://gate@db:5432/gate"
    assert (loaded.ledger_keep_s, loaded.ledger_keep_rows) == (3600, 500)
    assert loaded.archive_interval_s == 0.5


async def test_the_usage_summary_counts_archived_rows(client: Client, clock: ManualClock) -> None:
    ws = await filled(client, clock, 40)
    url = "/v1/usage/summary?month=2027-01"
    before = await (await client.get(url, headers=auth(ws["key"]))).json()
    assert before["total_spend_micros"] > 0
    await archive_pass(client)  # every row leaves Redis
    assert await (await client.get(url, headers=auth(ws["key"]))).json() == before


async def test_one_archived_row_by_id(client: Client, clock: ManualClock, redis: Redis) -> None:
    """The billing page's details panel opens rows Redis no longer holds."""
    ws = await filled(client, clock, 8)
    before = await all_rows(client, ws["key"])
    await archive_pass(client)
    assert await redis.xlen(keys.for_workspace(ws["id"]).ledger) == 0
    for row in (before[0], before[-1]):
        resp = await client.get(f"/v1/wallet/transactions/{row['id']}", headers=auth(ws["key"]))
        assert resp.status == 200, await resp.text()
        one = await resp.json()
        assert {k: one[k] for k in row} == row
        assert "details" in one


async def test_the_audit_log_is_archived_once_with_the_ledger(client: Client) -> None:
    ws = await new_workspace(client)
    resp = await client.patch("/v1/workspace", json={"inbound_grace_s": 5},
                              headers=auth(ws["key"]))  # fmt: skip
    assert resp.status == 200
    assert (await client.post("/v1/admin/rates/reload", headers=PLATFORM)).status == 200
    archive = client.app[CTX].archive
    assert archive is not None
    for _ in range(2):  # a second pass copies nothing twice
        await archive_pass(client)
        rows = await archive.audit_rows(ws["id"])
        assert [r["action"] for r in rows] == ["workspace.created", "workspace.updated"]
    assert rows[1]["key_id"] == ws["key_id"] and rows[1]["after"] == '{"inbound_grace_s":"5"}'
    platform = await archive.audit_rows("platform")
    assert [r["action"] for r in platform] == ["rates.reloaded"]

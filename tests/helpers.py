"""Helpers shared by the wallet tests: a domain Context without an app, and quick lookups."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis, RedisCluster

from gate.clock import Clock
from gate.context import Context
from gate.settings import Settings
from gate.store import keys
from gate.store.scripts import Scripts
from tests.conftest import PLATFORM, Client, auth


async def make_ctx(client: Redis | RedisCluster, clock: Clock, settings: Settings) -> Context:
    """What the app builds at start-up, minus the HTTP side: for tests of the domain layer."""
    scripts = Scripts(client)
    await scripts.load()
    return Context(client, scripts, clock, settings)


async def snapshot(redis: Redis, workspace_id: str) -> dict[str, Any]:
    """Everything a bad request must leave alone: wallet hash, ledger, refs, idem records."""
    k = keys.for_workspace(workspace_id)
    idem = sorted([key async for key in redis.scan_iter(match=f"{k.idem('*')}", count=1000)])
    return {
        "ws": await redis.hgetall(k.ws),
        "wallet": await redis.hgetall(k.wallet),
        "ledger": await redis.xlen(k.ledger),
        "refs": await redis.hgetall(k.refs),
        "keys": await redis.hgetall(k.keys),
        "idem": idem,
    }


async def wallet_json(client: Client, key: str) -> dict[str, Any]:
    resp = await client.get("/v1/wallet", headers=auth(key))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def all_rows(client: Client, key: str, query: str = "") -> list[dict[str, Any]]:
    """Every row of GET /v1/wallet/transactions, following the cursor."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        url = "/v1/wallet/transactions?limit=200" + (f"&{query}" if query else "")
        if cursor:
            url += f"&cursor={cursor}"
        resp = await client.get(url, headers=auth(key))
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        rows += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


async def adjust(client: Client, ws: dict[str, Any], usd: str) -> None:
    """Credit (or, negative, debit) a workspace by an operator adjustment of `usd` dollars."""
    resp = await client.post(
        f"/v1/workspaces/{ws['id']}/adjustments",
        json={"amount_usd": usd, "type": "adjustment", "description": "test adjustment"},
        headers=PLATFORM,
    )
    assert resp.status == 201, await resp.text()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a raw test connection and wait for it, whether or not the server already hung up."""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@contextlib.asynccontextmanager
async def listening(settings: Settings) -> AsyncIterator[int]:
    """A Gate (controllable clock) on a real port, served by Gate's own runner: the port."""
    from aiohttp import web

    from gate.api.protocol import make_runner
    from gate.app import create_app
    from gate.clock import ManualClock
    from gate.store.redis_proc import free_port

    runner = make_runner(create_app(settings, clock=ManualClock()), settings)
    await runner.setup()
    chosen = free_port()
    await web.TCPSite(runner, "127.0.0.1", chosen).start()
    try:
        yield chosen
    finally:
        await runner.cleanup()

"""Fair shares of the loop for event streams (issue 21 item 4): a workspace's replay is paid
from a per-workspace budget, reconnect storms get 429 with Retry-After, and a Last-Event-ID
older than what is kept gets one `resync` event instead of a scan."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from gate.api import events as api_events
from gate.app import create_app
from gate.clock import ManualClock
from gate.delivery import events
from gate.settings import Settings
from gate.store import keys
from tests.conftest import Client, new_workspace
from tests.test_sse import agent_key, frame


@pytest.fixture
async def sse(
    aiohttp_client: Callable[..., Awaitable[Client]],
    settings: Settings,
    clock: ManualClock,
) -> AsyncIterator[Client]:
    tuned = replace(settings, sse_replay_rows_per_s=1000, sse_opens_per_s=1)
    app = create_app(tuned, clock=clock)
    if api_events.OPEN_STREAMS not in app:
        api_events.setup(app)
    yield await aiohttp_client(app)


async def backlog(redis: Redis, ws: dict[str, Any], n: int) -> list[str]:
    """n events in the workspace's stream (as the scripts write them)."""
    k = keys.for_workspace(ws["id"])
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.xadd(k.events, {"type": "wallet.low_balance", "at": 1, "seq": i + 1})
        ids = await pipe.execute()
    return [i.decode() for i in ids]


async def test_a_replay_is_paid_from_the_workspace_budget(sse: Client, redis: Redis) -> None:
    ws = await new_workspace(sse)
    await backlog(redis, ws, 3000)
    agent = await agent_key(sse, ws)
    started = time.perf_counter()
    async with sse.get("/v1/events?from=0", headers=agent) as resp:
        assert (await frame(resp))["retry"]
        seen = 0
        while seen < 3000:
            f = await frame(resp, within=10)
            seen += "id" in f
    waited = time.perf_counter() - started
    # 1,000 rows/s with a second's burst: the last 2,000 take 2 s (on main: at once)
    assert waited >= 1.5, f"3,000 events in {waited:.2f} s"


async def test_a_too_old_last_event_id_gets_one_resync_event(sse: Client, redis: Redis) -> None:
    ws = await new_workspace(sse)
    ids = await backlog(redis, ws, 20)
    await redis.xtrim(keys.for_workspace(ws["id"]).events, maxlen=5, approximate=False)
    agent = await agent_key(sse, ws)
    last = {"Last-Event-ID": events.event_id(ws["id"], ids[2])}
    async with sse.get("/v1/events", headers=agent | last) as resp:
        await frame(resp)  # retry:
        f = await frame(resp)
        assert f["event"] == "resync", f
        assert f["id"] == events.event_id(ws["id"], ids[-1])  # then on from the newest


async def test_a_reconnect_storm_gets_429_with_retry_after(sse: Client) -> None:
    ws = await new_workspace(sse)
    agent = await agent_key(sse, ws)
    statuses = []
    for _ in range(7):
        async with sse.get("/v1/events", headers=agent) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
                assert (await resp.json())["error"]["code"] == "rate_limited"
                break
    assert statuses[:5] == [200] * 5 and statuses[-1] == 429, statuses

"""Redis Cluster gets what a single Redis gets: revocation at once, one event reader per process.

(The circuit on a cluster: tests/test_cluster_outage.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from redis.asyncio import RedisCluster

from gate.api.events import OPEN_STREAMS
from gate.api.http import CTX, FANOUT, STREAMS_REDIS
from gate.app import create_app
from gate.clock import ManualClock
from gate.history.check import check_all
from gate.settings import Settings
from gate.store import keys, redis_client
from gate.store.redis_proc import RedisClusterProcs
from tests.conftest import Client, auth, new_workspace
from tests.test_api_keys import make_key, revoke_and_wait, wallet_status
from tests.test_sse_fanout import PER_WORKSPACE, one_event_reaches_its_streams, open_streams

pytestmark = pytest.mark.cluster

MakeClusterClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def on_cluster(
    aiohttp_client: Callable[..., Awaitable[Client]],
    settings: Settings,
    clock: ManualClock,
    redis_cluster: RedisClusterProcs,
) -> AsyncIterator[MakeClusterClient]:
    """Gate apps on the session's cluster; the workspaces they made balance afterwards."""
    made: list[Client] = []

    async def make(**overrides: Any) -> Client:
        app = create_app(replace(settings, redis_url=redis_cluster.url, **overrides), clock=clock)
        made.append(await aiohttp_client(app))
        return made[-1]

    yield make
    client = await redis_client.connect(redis_cluster.url)
    try:
        assert isinstance(client, RedisCluster)
        ids = [m.decode() for m in await client.smembers(keys.WORKSPACES)]
        problems, _ = await check_all(client, ids)
        assert not problems, problems
    finally:
        await client.aclose()


def node_of(client: RedisCluster, key: str) -> str:
    return str(client.nodes_manager.get_node_from_slot(client.keyslot(key)).name)


async def test_revocation_is_at_once_in_every_process_on_a_cluster(
    on_cluster: MakeClusterClient,
) -> None:
    # Two apps stand for two gate processes; both cache keys for a minute.
    one = await on_cluster(auth_cache_s=60.0)
    two = await on_cluster(auth_cache_s=60.0)
    cluster = one.app[CTX].client
    assert isinstance(cluster, RedisCluster)
    # A workspace whose slot lives on another node than the revocation channel's: the
    # PUBLISH of key_revoke runs there and must still reach the listeners.
    channel_node = node_of(cluster, keys.KEYS_REVOKED)
    for _ in range(30):
        ws = await new_workspace(one, "Revoke")
        if node_of(cluster, keys.for_workspace(ws["id"]).keys) != channel_node:
            break
    else:
        raise AssertionError("30 workspaces all on the channel's node")
    agent = await make_key(one, ws, auth(ws["key"]), role="agent")
    assert await wallet_status(one, agent["key"]) == 200
    assert await wallet_status(two, agent["key"]) == 200  # now cached in both

    seconds = await revoke_and_wait(one, two, ws, agent)
    print(f"\nrevocation seen by the other process in {seconds:.3f} s")


def connections(client: Any) -> int:
    """Connections a cluster client holds open, over all its nodes."""
    return sum(len(node._connections) for node in client.get_nodes())


async def xrevrange_calls(client: RedisCluster) -> int:
    stats = await client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
    return sum(
        int(node_stats.get("cmdstat_xrevrange", {}).get("calls", 0))
        for node_stats in stats.values()
    )


async def test_many_streams_on_a_cluster_share_one_reader(on_cluster: MakeClusterClient) -> None:
    workspaces, per_workspace = 6, PER_WORKSPACE
    client = await on_cluster(
        sse_max_per_key=per_workspace, sse_max_per_workspace=50, auth_cache_s=60.0
    )
    call_path, streams = client.app[CTX].client, client.app[STREAMS_REDIS]
    assert isinstance(call_path, RedisCluster) and isinstance(streams, RedisCluster)
    assert call_path is not streams
    watchers = [await new_workspace(client, f"S{i}") for i in range(workspaces)]
    for ws in watchers:  # as in production, the keys are known already (the auth cache)
        assert (await client.get("/v1/wallet", headers=auth(ws["key"]))).status == 200
    call_path_before = connections(call_path)
    url = str(client.make_url("/v1/events"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        opened = await open_streams(http, url, watchers)
        try:
            fanout = client.app[FANOUT]
            assert client.app[OPEN_STREAMS].count == workspaces * per_workspace
            assert fanout.watched == workspaces
            # Over a second of quiet: the one reader's rounds, each one XREVRANGE per watched
            # workspace (not per stream), pipelined on the streams' own client.
            reads, calls = fanout.reads, await xrevrange_calls(streams)
            await asyncio.sleep(1.0)
            rounds = fanout.reads - reads
            polled = await xrevrange_calls(streams) - calls
            assert 1 <= rounds <= 12, rounds  # every POLL_S = 0.1 s, fewer on a busy machine
            assert polled <= (rounds + 1) * workspaces, (rounds, polled)
            # The call path's connections were not taken by the streams.
            assert connections(call_path) <= call_path_before + 1

            # An event of one workspace reaches its streams, and only them.
            fanout_s = await one_event_reaches_its_streams(client, opened, watchers[0])
        finally:
            for resp in opened:
                resp.close()
    print(
        f"\n{workspaces * per_workspace} streams on a cluster: {rounds} reader rounds/s, "
        f"{polled} XREVRANGE/s; one event to {per_workspace} streams in {fanout_s * 1000:.0f} ms"
    )

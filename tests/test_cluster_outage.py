"""Redis Cluster away: the single-node circuit, 503 gate_unavailable fast, recovery alone.

Each test runs its own 3-master cluster (never the session's shared one) so it can pause or
kill every node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gate.app import create_app
from gate.clock import ManualClock
from gate.history.check import check_all
from gate.settings import Settings
from gate.store import redis_client
from gate.store.redis_proc import RedisClusterProcs, RedisServer
from tests.conftest import Client
from tests.test_redis_outage import (
    DEADLINE_S,
    FAST_S,
    answers_503,
    outage_lines,
    setup_call,
    wait_ready,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterProcs]:
    with RedisClusterProcs.start(tmp_path / "cluster", masters=3) as cluster:
        yield cluster


@pytest.fixture
async def gate(
    aiohttp_client: Callable[..., Awaitable[Client]],
    settings: Settings,
    own_cluster: RedisClusterProcs,
) -> AsyncIterator[Client]:
    app = create_app(
        replace(settings, redis_url=own_cluster.url, redis_timeout_ms=int(DEADLINE_S * 1000)),
        clock=ManualClock(),
    )
    yield await aiohttp_client(app)


def signal_all(cluster: RedisClusterProcs, sig: signal.Signals) -> None:
    for server in cluster.servers:
        os.kill(server.pid, sig)


async def books_balance(cluster: RedisClusterProcs, workspace_id: str) -> None:
    client = await redis_client.connect(cluster.url)
    try:
        problems, checked = await check_all(client, [workspace_id])
        assert (problems, checked) == ([], 1)
    finally:
        await client.aclose()


async def test_cluster_paused_answers_503_within_the_deadline_then_recovers(
    gate: Client, own_cluster: RedisClusterProcs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ws = await setup_call(gate)
    signal_all(own_cluster, signal.SIGSTOP)
    try:
        # Requests in flight when the cluster stops wait one deadline, not redis-py's retries.
        started = time.perf_counter()
        burst = await asyncio.gather(
            *(gate.get("/v1/wallet", headers=ws["admin"]) for _ in range(10))
        )
        first_s = time.perf_counter() - started
        assert [r.status for r in burst] == [503] * 10
        assert first_s < DEADLINE_S + FAST_S, first_s
        # The circuit is open now: nothing waits for the paused nodes any more.
        seconds = await answers_503(gate, ws)
        assert max(seconds) < FAST_S, seconds
        assert outage_lines(caplog) == (1, 0)
    finally:
        signal_all(own_cluster, signal.SIGCONT)
    assert await wait_ready(gate, within_s=5.0) < 5.0
    resp = await gate.get("/v1/wallet", headers=ws["admin"])
    assert resp.status == 200
    resp = await gate.post("/v1/calls/c-live/end", json={"duration_s": 5}, headers=ws["switch"])
    assert resp.status == 200, await resp.text()
    assert outage_lines(caplog) == (1, 1)
    await books_balance(own_cluster, ws["id"])


async def test_cluster_killed_every_route_503_at_once_then_recovers(
    gate: Client, own_cluster: RedisClusterProcs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ws = await setup_call(gate)
    signal_all(own_cluster, signal.SIGKILL)
    await asyncio.to_thread(own_cluster.stop)  # reaps them
    first = await gate.get("/v1/wallet", headers=ws["admin"])  # opens the circuit
    assert first.status == 503
    seconds = await answers_503(gate, ws)
    assert max(seconds) < FAST_S, seconds
    assert "gate_redis_up 0.0" in await (await gate.get("/metrics")).text()
    assert outage_lines(caplog) == (1, 0)

    # The same nodes come back on their ports with their nodes.conf (their data is gone: the
    # fixture runs them without AOF); Gate notices by itself, no restart.
    back = [
        await asyncio.to_thread(
            RedisServer.start, s.data_dir, port=s.port, appendonly=False, cluster=True
        )
        for s in own_cluster.servers
    ]
    try:
        assert await wait_ready(gate, within_s=15.0) < 15.0
        resp = await gate.get("/readyz")
        assert resp.status == 200, await resp.text()
        assert outage_lines(caplog) == (1, 1)
        assert "gate_redis_up 1.0" in await (await gate.get("/metrics")).text()
    finally:
        for server in back:
            server.stop()

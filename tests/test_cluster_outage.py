"""Redis Cluster away: the single-node circuit, 503 gate_unavailable fast, recovery alone.

Each test runs its own 3-master cluster (never the session's shared one) so it can pause or
kill every node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import RedisClusterException

from gate.history.check import check_all
from gate.settings import Settings
from gate.store import redis_client
from gate.store.circuit import Circuit
from gate.store.redis_proc import RedisClusterProcs, RedisServer
from tests.conftest import Client
from tests.test_redis_outage import (
    FAST_S,
    answers_503,
    outage_app,
    outage_lines,
    paused_answers,
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
    yield await aiohttp_client(outage_app(settings, own_cluster.url))


def signal_all(cluster: RedisClusterProcs, sig: signal.Signals) -> None:
    for server in cluster.servers:
        os.kill(server.pid, sig)


async def call_then(
    gate: Client, cluster: RedisClusterProcs, sig: signal.Signals, caplog: pytest.LogCaptureFixture
) -> dict[str, Any]:
    """A workspace with a live call, then `sig` to every node of the cluster."""
    caplog.set_level(logging.INFO)
    ws = await setup_call(gate)
    signal_all(cluster, sig)
    return ws


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
    ws = await call_then(gate, own_cluster, signal.SIGSTOP, caplog)
    try:
        first_s, seconds = await paused_answers(gate, ws, caplog)
    finally:
        signal_all(own_cluster, signal.SIGCONT)
    ready_s = await wait_ready(gate, within_s=5.0)
    print(
        f"\ncluster paused: the burst answered 503 in {first_s * 1000:.0f} ms, then "
        f"{min(seconds) * 1000:.1f}-{max(seconds) * 1000:.1f} ms; "
        f"ready {ready_s:.2f} s after SIGCONT"
    )
    resp = await gate.get("/v1/wallet", headers=ws["admin"])
    assert resp.status == 200
    resp = await gate.post("/v1/calls/c-live/end", json={"duration_s": 5}, headers=ws["switch"])
    assert resp.status == 200, await resp.text()
    assert outage_lines(caplog) == (1, 1)
    await books_balance(own_cluster, ws["id"])


async def test_cluster_killed_every_route_503_at_once_then_recovers(
    gate: Client, own_cluster: RedisClusterProcs, caplog: pytest.LogCaptureFixture
) -> None:
    ws = await call_then(gate, own_cluster, signal.SIGKILL, caplog)
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
        ready_s = await wait_ready(gate, within_s=15.0)
        print(
            f"\ncluster killed: 503 in {min(seconds) * 1000:.1f}-{max(seconds) * 1000:.1f} ms; "
            f"ready {ready_s:.2f} s after the nodes were back"
        )
        resp = await gate.get("/readyz")
        assert resp.status == 200, await resp.text()
        assert outage_lines(caplog) == (1, 1)
        assert "gate_redis_up 1.0" in await (await gate.get("/metrics")).text()
    finally:
        for server in back:
            server.stop()


async def test_a_callers_mistake_does_not_open_the_circuit(
    redis_cluster: RedisClusterProcs,
) -> None:
    """redis-py raises RedisClusterException for keys in different slots too: not an outage."""
    circuit = Circuit()
    client = await redis_client.connect(redis_cluster.url, circuit=circuit, socket_timeout=2.0)
    try:
        with pytest.raises(RedisClusterException):
            await client.execute_command("MGET", "gate:{a}:x", "gate:{b}:x")
        assert not circuit.is_open
        assert await client.ping()
    finally:
        await client.aclose()
        await circuit.stop()

"""Tests for the private redis-server helpers and the Redis client factory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis.asyncio

from gate.store.redis_client import connect
from gate.store.redis_proc import (
    RedisClusterProcs,
    RedisServer,
    RedisServerError,
    RedisServerMissing,
    find_redis_server,
    free_port,
)
from tests.redis_fixtures import redis_cluster, redis_server  # noqa: F401


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_single_server_with_aof_starts_answers_and_stops(tmp_path: Path) -> None:
    server = RedisServer.start(tmp_path / "data", appendonly=True)
    try:
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}"
        client = await connect(server.url)
        try:
            assert await client.ping()
            await client.set(b"k", b"v")
            assert await client.get(b"k") == b"v"
        finally:
            await client.aclose()
        # Redis 7 keeps the AOF as a manifest plus base and incremental files in a sub-dir.
        aof_files = list((tmp_path / "data").rglob("*.aof*"))
        assert aof_files, sorted(p.name for p in (tmp_path / "data").rglob("*"))
        assert (tmp_path / "data" / "redis.log").is_file()
    finally:
        server.stop()
    assert not server.running
    assert not _process_exists(server.pid)
    server.stop()  # a second stop is a no-op


async def test_aof_data_survives_a_restart(tmp_path: Path) -> None:
    with RedisServer.start(tmp_path, appendonly=True, appendfsync="always") as first:
        client = await connect(first.url)
        await client.set(b"{ws1}:balance", b"123")
        await client.aclose()
    with RedisServer.start(tmp_path, appendonly=True) as second:
        client = await connect(second.url)
        assert await client.get(b"{ws1}:balance") == b"123"
        await client.aclose()


def test_appendonly_no_writes_no_aof(tmp_path: Path) -> None:
    with RedisServer.start(tmp_path, appendonly=False):
        pass
    assert not list(tmp_path.rglob("*.aof*"))


def test_startup_failure_reports_log_tail(tmp_path: Path) -> None:
    with pytest.raises(RedisServerError) as info:
        RedisServer.start(tmp_path, extra=["--no-such-option", "x"])
    message = str(info.value)
    assert "Bad directive" in message
    assert "no-such-option" in message


def test_port_in_use_is_an_error_not_the_other_server(tmp_path: Path) -> None:
    with RedisServer.start(tmp_path / "a", appendonly=False) as first:
        with pytest.raises(RedisServerError):
            RedisServer.start(tmp_path / "b", port=first.port, appendonly=False)
        assert first.running


def test_missing_binary_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RedisServerMissing) as info:
        find_redis_server()
    assert "apt-get install -y redis-server" in str(info.value)
    assert "GATE_REDIS_URL" in str(info.value)


def test_free_port_avoids_the_machine_redis() -> None:
    for _ in range(20):
        port = free_port(cluster_bus=True)
        assert port not in (6379, 16379)
        assert port + 10000 <= 65535


def test_cluster_needs_three_masters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        RedisClusterProcs.start(tmp_path, masters=2)


async def test_session_server_fixture(redis_server: RedisServer) -> None:  # noqa: F811
    client = await connect(redis_server.url)
    try:
        assert isinstance(client, redis.asyncio.Redis)
        assert await client.ping()
    finally:
        await client.aclose()


async def test_connect_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="GATE_REDIS_URL") as info:
        await connect("mysql://user:s3cret@localhost:3306/0")
    assert "s3cret" not in str(info.value)


@pytest.mark.cluster
async def test_cluster_spreads_hash_tags_over_all_masters(
    redis_cluster: RedisClusterProcs,  # noqa: F811
) -> None:
    assert len(redis_cluster.ports) == 3
    assert redis_cluster.url == f"redis+cluster://127.0.0.1:{redis_cluster.ports[0]}"
    client = await connect(redis_cluster.url)
    try:
        assert isinstance(client, redis.asyncio.RedisCluster)
        for node in client.get_nodes():
            info = await client.cluster_info(target_nodes=node)
            assert info["cluster_state"] == "ok"
        owners = set()
        for i in range(12):
            key = f"{{ws{i}}}:balance"
            await client.set(key, str(i).encode())
            assert await client.get(key) == str(i).encode()
            owner = client.get_node_from_key(key)
            assert owner is not None
            owners.add(owner.port)
        assert owners == set(redis_cluster.ports)
        # One script over several keys of one workspace runs on one node (docs/design.md §10).
        script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[2], 2)"
        assert await client.eval(script, 2, b"{ws7}:a", b"{ws7}:b", b"x") == 2
        assert await client.get(b"{ws7}:a") == b"x"
    finally:
        await client.aclose()

"""Session-wide pytest fixtures that run private redis-server processes for the tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gate.store.redis_proc import RedisClusterProcs, RedisServer

__all__ = ["redis_cluster", "redis_server"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One single-node redis-server for the whole session; tests share it, so use own keys.

    AOF is off for speed: no test of this fixture's data survives a restart anyway.
    """
    with RedisServer.start(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    """A 3-master Redis Cluster, started only if some test of the session asks for it."""
    with RedisClusterProcs.start(tmp_path_factory.mktemp("redis-cluster"), masters=3) as cluster:
        yield cluster

"""Open an asyncio Redis client, single node or Redis Cluster, from a GATE_REDIS_URL."""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis.asyncio

from gate.store.circuit import Circuit, GuardedPool
from gate.store.cluster_circuit import GuardedCluster

__all__ = ["RedisClient", "connect"]

RedisClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.RedisCluster

_SINGLE_SCHEMES = ("redis", "rediss", "unix")
# redis+cluster://[user:password@]host:port names one seed node; the rest are discovered.
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


async def connect(url: str, *, circuit: Circuit | None = None, **kw: Any) -> RedisClient:
    """Return a client for url; bytes in and out (decode_responses=False) unless kw says otherwise.

    A single-node client connects lazily on its first command; a cluster client contacts the
    seed node at once to learn the slot map, so an unreachable cluster fails here. With a
    circuit, a client fails fast while Redis is unreachable (gate/store/circuit.py; a cluster's
    guard sits above redis-py's own retries across nodes: gate/store/cluster_circuit.py).
    """
    scheme = urlsplit(url).scheme.lower()
    options: dict[str, Any] = {"decode_responses": False, **kw}
    if scheme in _SINGLE_SCHEMES:
        # A blocking pool: under a burst, a request waits a moment for a connection instead
        # of failing with "Too many connections"; 64 is far more than one Redis needs.
        options.setdefault("max_connections", 64)
        options.setdefault("timeout", 10)
        if circuit is not None:
            pool: redis.asyncio.BlockingConnectionPool = GuardedPool.from_url(
                url, circuit=circuit, **options
            )
        else:
            pool = redis.asyncio.BlockingConnectionPool.from_url(url, **options)
        return redis.asyncio.Redis.from_pool(pool)  # the client owns and closes the pool
    if scheme in _CLUSTER_SCHEMES:
        # RedisCluster.from_url parses host, port, credentials and query options from a plain
        # redis:// URL, so only the scheme is rewritten.
        plain = _CLUSTER_SCHEMES[scheme] + url[len(scheme) :]
        # No socket deadline on a cluster: a call start must wait for its own deadline
        # (gate/store/scripts.py OWN_DEADLINE), and socket timeouts cannot be lifted one
        # command at a time. With a circuit, the guard applies the deadline per command instead.
        deadline_s = options.pop("socket_timeout", None)
        if circuit is not None:
            client: redis.asyncio.RedisCluster = GuardedCluster.from_url(plain, **options)
        else:
            client = redis.asyncio.RedisCluster.from_url(plain, **options)
        try:
            await client.initialize()
        except BaseException:
            await client.aclose()
            raise
        if isinstance(client, GuardedCluster) and circuit is not None:
            client.guard(circuit, deadline_s)
        return client
    known = ", ".join(f"{s}://" for s in (*_SINGLE_SCHEMES, *_CLUSTER_SCHEMES))
    # The URL itself is not echoed: it may carry a password.
    raise ValueError(
        f"unsupported Redis URL scheme {scheme!r} in GATE_REDIS_URL; use one of {known}"
    )


StreamEntry: TypeAlias = tuple[bytes, dict[bytes, bytes]]


def entries(raw: Any) -> list[StreamEntry]:
    """XRANGE/XREVRANGE replies typed as they arrive with decode_responses=False."""
    return list(raw or [])


def text(value: bytes | str) -> str:
    """A reply value as str, whichever way the client decodes."""
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    """A reply value as bytes, whichever way the client decodes."""
    return value.encode() if isinstance(value, str) else value

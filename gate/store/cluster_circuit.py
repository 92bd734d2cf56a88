"""Redis Cluster behind the same circuit as a single Redis: fail fast while the cluster is away.

redis-py's cluster client retries a failed command itself (re-reading the slot map from every
node it knows, with back-off), which on a dead or paused cluster takes seconds, and it has no
per-command deadline Gate could lift for the scripts that carry their own (scripts.py
OWN_DEADLINE). So the guard sits above those retries, around each command and each pipeline:

    GuardedCluster.execute_command / GuardedClusterPipeline.execute
        ──▶ circuit.check()                       (open: RedisUnavailable at once)
        ──▶ the command under the deadline       (GATE_REDIS_TIMEOUT_MS, unless own_deadline)
        ──▶ circuit.ok() / circuit.failed(err)

One circuit covers the whole cluster: with full slot coverage required (Redis's default) a
cluster missing a primary refuses every command anyway (CLUSTERDOWN), and those refusals count
as "unavailable" here too. The probe closes the circuit when every primary answers PING and
reports `cluster_state:ok`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    RedisClusterException,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate.store.circuit import Circuit, is_unavailable

__all__ = ["ClusterUnavailable", "GuardedCluster"]

T = TypeVar("T")

# What initialize() raises when no node it knows answers, or none has a full slot map.
_NO_CLUSTER = ("Redis Cluster cannot be connected", "All slots are not covered")


def _cluster_down(err: BaseException) -> bool:
    """The cluster cannot serve (CLUSTERDOWN, an uncovered slot, no reachable node).

    Not any RedisClusterException: redis-py raises that for a caller's mistakes too (keys of
    one command in different slots), and a bug must not open the circuit for everyone.
    """
    if isinstance(err, ClusterDownError | SlotNotCoveredError):
        return True
    if isinstance(err, RedisClusterException):
        cause = err.__cause__
        return (cause is not None and is_unavailable(cause)) or str(err).startswith(_NO_CLUSTER)
    return False


class ClusterUnavailable(RedisConnectionError):
    """The cluster answered that it cannot serve (CLUSTERDOWN, an uncovered slot, no node)."""


class GuardedCluster(redis.asyncio.RedisCluster):
    """A cluster client whose commands and pipelines go through a circuit, under a deadline."""

    circuit: Circuit | None = None
    deadline_s: float | None = None

    def guard(self, circuit: Circuit, deadline_s: float | None) -> None:
        self.circuit = circuit
        self.deadline_s = deadline_s
        circuit.attach_probe(self.probe)

    async def guarded(self, run: Callable[[], Awaitable[T]], *, own_deadline: bool = False) -> T:
        """Run one command or pipeline: refused at once while open, reported either way."""
        circuit = self.circuit
        if circuit is None:
            return await run()
        circuit.check()
        try:
            if self.deadline_s is None or own_deadline:
                reply = await run()
            else:
                async with asyncio.timeout(self.deadline_s):
                    reply = await run()
        except TimeoutError as err:  # the deadline: redis-py disconnects the cut connection
            timeout = RedisTimeoutError(f"no reply from Redis Cluster within {self.deadline_s:g} s")
            circuit.failed(timeout)
            raise timeout from err
        except RedisTimeoutError as err:
            circuit.failed(err)
            raise
        except MaxConnectionsError:
            raise  # this process is busy (its pool is full), the cluster is not away: 503 alone
        except RedisConnectionError as err:
            # Only after redis-py tried every node it knows: the cluster is not reachable.
            circuit.failed(err, connecting=True)
            raise
        except (ClusterDownError, RedisClusterException) as err:
            if not _cluster_down(err):
                raise
            down = ClusterUnavailable(f"{type(err).__name__}: {err}")
            circuit.failed(down, connecting=True)
            raise down from err
        circuit.ok()
        return reply

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        own_deadline = bool(kwargs.pop("own_deadline", False))
        run = super().execute_command
        return await self.guarded(lambda: run(*args, **kwargs), own_deadline=own_deadline)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # raises, as redis-py does
        # redis-py declares a property abstract that its own ClusterPipeline never defines.
        return GuardedClusterPipeline(self, transaction)  # type: ignore[abstract]

    async def probe(self) -> bool:
        """True when every primary answers PING on a fresh connection and the cluster is ok."""
        nodes = self.get_primaries() or self.get_nodes()
        if not nodes:
            return False
        answers = await asyncio.gather(*(_ping(node) for node in nodes))
        return all(answers)


class GuardedClusterPipeline(ClusterPipeline):
    """A cluster pipeline whose execute goes through its client's circuit."""

    cluster: GuardedCluster

    def __init__(self, client: GuardedCluster, transaction: Any | None = None) -> None:
        super().__init__(client, transaction)
        self.cluster = client

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        run = super().execute
        return await self.cluster.guarded(lambda: run(raise_on_error, allow_redirections))


async def _ping(node: ClusterNode) -> bool:
    conn = node.connection_class(**node.connection_kwargs)
    try:
        async with asyncio.timeout(1.0):
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("PING")
            pong = await conn.read_response()
            await conn.send_command("CLUSTER", "INFO")
            info = await conn.read_response()
        return pong in (b"PONG", "PONG") and b"cluster_state:ok" in _as_bytes(info)
    except (RedisConnectionError, RedisTimeoutError, OSError):
        return False
    finally:
        await conn.disconnect()


def _as_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value or b"")

"""Redis availability as this process sees it: a circuit that fails fast while Redis is away.

Closed (the normal state): commands go to Redis, each under the per-command deadline
(GATE_REDIS_TIMEOUT_MS, the pool's socket timeout). Open: Redis refused a connection, or
commands kept getting no answer in time for a while (`failed`); every command fails at once with
`RedisUnavailable` (the API answers `503 gate_unavailable`) instead of queueing behind a dead
socket, and a probe task PINGs Redis on a fresh connection until it answers, then closes the
circuit. Each change of state is one log line; the requests in between log nothing.

    GuardedPool.get_connection ──▶ circuit.check()        (open: RedisUnavailable at once)
    GuardedConnection connect/read/send ──▶ failed(err) / ok()
    the auto-pipeline (scripts.py) ──▶ report(conn, err)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate import metrics

log = logging.getLogger("gate.store.circuit")

__all__ = [
    "Circuit",
    "GuardedConnection",
    "GuardedPool",
    "RedisUnavailable",
    "is_unavailable",
    "report",
]


class RedisUnavailable(RedisConnectionError):
    """The circuit is open: Redis was not reachable a moment ago; nothing was sent."""


def is_unavailable(err: BaseException) -> bool:
    """True for the errors that mean "Redis did not answer" (not a bad command or script)."""
    return isinstance(err, RedisConnectionError | RedisTimeoutError)


class Circuit:
    """Closed or open; opens on a failed connect or `open_after` failures in a row."""

    def __init__(
        self,
        *,
        open_after: int = 3,
        open_after_s: float = 0.1,
        probe_min_s: float = 0.05,
        probe_max_s: float = 0.5,
    ) -> None:
        self.open_after = open_after
        self.open_after_s = open_after_s
        self.probe_min_s = probe_min_s
        self.probe_max_s = probe_max_s
        self.is_open = False
        self.opened_at = 0.0  # time.monotonic() of the last opening
        self.reason = ""
        self.refused = 0  # commands refused while open, for the closing log line
        self.outages = 0
        self._failures = 0
        self._first_failure = 0.0  # time.monotonic() of the first failure of the streak
        self._probe: asyncio.Task[None] | None = None
        self._connection_class: type[Any] = redis.asyncio.Connection
        self._connection_kwargs: dict[str, Any] | None = None
        self._probe_once: Callable[[], Awaitable[bool]] | None = None  # a cluster's own probe
        self._stopped = False
        metrics.REDIS_UP.set(1)

    # -- what commands call ------------------------------------------------------------

    def check(self) -> None:
        """Raise RedisUnavailable while the circuit is open."""
        if self.is_open:
            self.refused += 1
            raise RedisUnavailable(f"Redis unreachable ({self.reason}); not sent")

    def ok(self) -> None:
        """A command got its answer."""
        self._failures = 0

    def failed(self, err: BaseException, *, connecting: bool = False) -> None:
        """A command or a connect got no answer; opens the circuit when that is a pattern.

        A refused connection opens it at once. Timeouts open it only when `open_after` of
        them in a row span at least `open_after_s`: a stalled event loop times out every
        command in flight at the same instant, and that is not Redis going away.
        """
        if self.is_open or isinstance(err, RedisUnavailable):
            return
        now = time.monotonic()
        if self._failures == 0:
            self._first_failure = now
        self._failures += 1
        refused = connecting and not isinstance(err, RedisTimeoutError)
        if refused or (
            self._failures >= self.open_after and now - self._first_failure >= self.open_after_s
        ):
            self._open(err)

    # -- state changes -----------------------------------------------------------------

    def _open(self, err: BaseException) -> None:
        self.is_open = True
        self.opened_at = time.monotonic()
        self.reason = f"{type(err).__name__}: {err}"[:200]
        self.refused = 0
        self.outages += 1
        metrics.REDIS_UP.set(0)
        log.error(
            "redis unavailable (%s): answering 503 gate_unavailable and probing until it is back",
            self.reason,
        )
        probes = self._connection_kwargs is not None or self._probe_once is not None
        if probes and not self._stopped:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a sync caller): the next async use probes
                return
            if self._probe is None or self._probe.done():
                self._probe = loop.create_task(self._probe_loop(), name="gate-redis-probe")

    def _close(self) -> None:
        self.is_open = False
        self._failures = 0
        metrics.REDIS_UP.set(1)
        log.warning(
            "redis reachable again after %.1f s; %d commands were refused meanwhile",
            time.monotonic() - self.opened_at,
            self.refused,
        )

    async def _probe_loop(self) -> None:
        delay = self.probe_min_s
        while self.is_open and not self._stopped:
            await asyncio.sleep(delay)
            if await (self._probe_once or self._ping)():
                self._close()
                return
            delay = min(delay * 2, self.probe_max_s)

    async def _ping(self) -> bool:
        """One PING on a fresh connection of the pool's own kind: True when Redis answers."""
        assert self._connection_kwargs is not None
        conn = self._connection_class(**self._connection_kwargs)
        try:
            async with asyncio.timeout(max(self.probe_max_s, 1.0)):
                await conn.connect()
                await conn.send_command("PING")
                pong = await conn.read_response()
            return pong in (b"PONG", "PONG")
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return False  # still away: the opening line said so already
        finally:
            await conn.disconnect()

    def attach(self, connection_class: type[Any], connection_kwargs: dict[str, Any]) -> None:
        """How to open a probe connection: the pool's own class and settings, unguarded."""
        self._connection_class = connection_class
        self._connection_kwargs = {k: v for k, v in connection_kwargs.items() if k != "circuit"}

    def attach_probe(self, probe: Callable[[], Awaitable[bool]]) -> None:
        """Probe with this instead of one PING (a cluster: every primary must answer)."""
        self._probe_once = probe

    async def stop(self) -> None:
        """End the probe task (app shutdown)."""
        self._stopped = True
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None


class GuardedConnection(AbstractConnection):
    """A connection that tells the circuit how its connects and reads went.

    A mixin put in front of whichever class the URL picks (TCP, TLS, unix socket): `guarded`.
    """

    circuit: Circuit

    def __init__(self, *, circuit: Circuit, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.circuit = circuit

    async def connect(self) -> None:
        try:
            await super().connect()  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError) as err:
            self.circuit.failed(err, connecting=True)
            raise

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (RedisConnectionError, RedisTimeoutError) as err:
            self.circuit.failed(err)
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            reply = await super().read_response(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as err:
            self.circuit.failed(err)
            raise
        self.circuit.ok()
        return reply


def guarded(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """GuardedConnection in front of `base` (Connection, SSLConnection, a unix socket one)."""
    return type(f"Guarded{base.__name__}", (GuardedConnection, base), {})


class GuardedPool(redis.asyncio.BlockingConnectionPool):
    """A blocking pool that refuses at once, without waiting for a connection, while open."""

    def __init__(self, *, circuit: Circuit, **kwargs: Any) -> None:
        base = kwargs.pop("connection_class", redis.asyncio.Connection)
        super().__init__(connection_class=guarded(base), circuit=circuit, **kwargs)
        self.circuit = circuit
        circuit.attach(base, self.connection_kwargs)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.circuit.check()
        conn = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        if self.circuit.is_open:  # it opened while this request queued for a connection
            await self.release(conn)
            self.circuit.check()
        return conn


def report(conn: object, err: BaseException | None) -> None:
    """For code that reads a connection's parser directly (the auto-pipeline): the outcome."""
    if isinstance(conn, GuardedConnection):
        if err is None:
            conn.circuit.ok()
        elif is_unavailable(err):
            conn.circuit.failed(err)

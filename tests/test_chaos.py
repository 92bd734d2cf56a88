"""`loadtest --chaos` in its short form, and what it found: a connection reset by a dying Redis."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gate.store.redis_client import connect
from gate.store.redis_proc import RedisServer
from gate.store.scripts import Scripts
from tests.test_redis_outage import own_redis

__all__ = ["own_redis"]  # a fixture, used by name below


async def test_a_script_call_reset_by_a_dying_redis_is_a_redis_connection_error(
    own_redis: RedisServer,
) -> None:
    """Found by `loadtest --chaos`: a call start whose command Redis had not read yet when it
    was killed got ECONNRESET as a bare OSError (the automatic pipeline reads Redis's parser
    directly, without redis-py's wrapping), which became `500 internal_error` with a traceback
    instead of `503 gate_unavailable`, and which the circuit did not count as an outage."""
    client = await connect(own_redis.url)
    try:
        scripts = Scripts(client)
        await scripts.load()  # the pool's connection is open before Redis stops
        os.kill(own_redis.pid, signal.SIGSTOP)
        call = asyncio.ensure_future(scripts.call("call_start", [f"k{i}" for i in range(9)], []))
        await asyncio.sleep(0.2)
        os.kill(own_redis.pid, signal.SIGKILL)
        with pytest.raises(RedisConnectionError):
            await call
    finally:
        await client.aclose()

"""Redis away: every route answers 503 gate_unavailable at once, quietly, and recovers alone.

Each test runs its own redis-server (never the session's shared one) so it can kill or pause
it: kill -9 (connections refused), then SIGSTOP/SIGCONT (connections accepted, no answers).
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
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate.app import create_app
from gate.clock import ManualClock
from gate.history.check import check_all
from gate.settings import Settings
from gate.store import keys
from gate.store.circuit import Circuit, RedisUnavailable
from gate.store.redis_client import connect
from gate.store.redis_proc import RedisServer, free_port
from tests.conftest import PLATFORM, Client, auth

DEADLINE_S = 0.25  # GATE_REDIS_TIMEOUT_MS: the default
# Generous bounds for a shared 2-core machine; the figures measured go in the README.
FAST_S = 0.5


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone, fsyncing every write so a kill -9 loses nothing."""
    with RedisServer.start(tmp_path / "redis", appendfsync="always") as server:
        yield server


@pytest.fixture
async def gate(
    aiohttp_client: Callable[..., Awaitable[Client]],
    settings: Settings,
    own_redis: RedisServer,
) -> AsyncIterator[Client]:
    yield await aiohttp_client(outage_app(settings, own_redis.url))


def outage_app(settings: Settings, redis_url: str) -> web.Application:
    """A gate on that Redis with the default command deadline, as the outage tests want."""
    return create_app(
        replace(settings, redis_url=redis_url, redis_timeout_ms=int(DEADLINE_S * 1000)),
        clock=ManualClock(),
    )


async def setup_call(gate: Client) -> dict[str, Any]:
    """A workspace with an admin key, a switch key minted by the platform, and a live call."""
    resp = await gate.post("/v1/workspaces", json={"name": "Outage"}, headers=PLATFORM)
    assert resp.status == 201, await resp.text()
    ws: dict[str, Any] = await resp.json()
    resp = await gate.post(
        f"/v1/workspaces/{ws['id']}/keys", json={"role": "switch"}, headers=PLATFORM
    )
    assert resp.status == 201, await resp.text()
    ws["switch"] = auth((await resp.json())["key"])
    ws["admin"] = auth(ws["key"])
    resp = await gate.post("/v1/calls", json=start_body("c-live"), headers=ws["switch"])
    assert resp.status == 201, await resp.text()
    return ws


def start_body(call_id: str) -> dict[str, Any]:
    return {"call_id": call_id, "direction": "outbound", "from": "+15550001", "to": "+15550002"}


def requests(ws: dict[str, Any]) -> list[tuple[str, str, dict[str, str], Any]]:
    """One request of each kind: reads, call routes, wallet writes, platform routes."""
    return [
        ("GET", "/v1/wallet", ws["admin"], None),
        ("GET", "/v1/wallet/transactions", ws["admin"], None),
        ("GET", "/v1/workspace", ws["admin"], None),
        ("GET", "/v1/calls/c-live", ws["admin"], None),
        ("POST", "/v1/calls", ws["switch"], start_body("c-new")),
        ("POST", "/v1/calls/c-live/heartbeat", ws["switch"], {"elapsed_s": 5, "seq": 1}),
        ("POST", "/v1/calls/c-live/end", ws["switch"], {"duration_s": 5}),
        ("PATCH", "/v1/wallet/settings", ws["admin"], {"low_balance_alert": {"enabled": False}}),
        ("POST", "/v1/workspaces", PLATFORM, {"name": "Another"}),
        ("GET", "/v1/events?from=0", ws["admin"], None),
    ]


async def answers_503(gate: Client, ws: dict[str, Any]) -> list[float]:
    """Send every kind of request; each must be 503 gate_unavailable. Returns the latencies."""
    seconds = []
    for method, path, headers, body in requests(ws):
        started = time.perf_counter()
        resp = await gate.request(method, path, headers=headers, json=body)
        seconds.append(time.perf_counter() - started)
        payload = await resp.json()
        assert resp.status == 503, (method, path, payload)
        assert payload["error"]["code"] == "gate_unavailable", payload
        assert "retry" in payload["error"]["message"]
        assert resp.headers["Retry-After"] == "1"
    resp = await gate.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["status"] == "unavailable"
    resp = await gate.get("/healthz")  # the process itself is fine
    assert resp.status == 200
    return seconds


async def paused_answers(
    gate: Client, ws: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> tuple[float, list[float]]:
    """Redis just paused: a burst waits one deadline, then every route answers 503 at once.

    Returns the burst's seconds and each later request's."""
    # Requests in flight when Redis stops wait one deadline, not the old 5-10 s.
    started = time.perf_counter()
    burst = await asyncio.gather(*(gate.get("/v1/wallet", headers=ws["admin"]) for _ in range(10)))
    first_s = time.perf_counter() - started
    assert [r.status for r in burst] == [503] * 10
    assert first_s < DEADLINE_S + FAST_S, first_s
    # The circuit is open now: no request waits for the paused Redis any more.
    seconds = await answers_503(gate, ws)
    assert max(seconds) < FAST_S, seconds
    assert outage_lines(caplog) == (1, 0)
    return first_s, seconds


async def wait_ready(gate: Client, within_s: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < within_s:
        resp = await gate.get("/readyz")
        if resp.status == 200:
            return time.perf_counter() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"/readyz still red {within_s} s after Redis came back")


def outage_lines(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """(outage opened lines, recovery lines); and no traceback was logged at all."""
    tracebacks = [
        (r.name, r.getMessage(), repr(r.exc_info[1])) for r in caplog.records if r.exc_info
    ]
    # Never one per request; a background loop may log one odd error around the restart.
    assert not [t for t in tracebacks if t[0].startswith("gate.api")], tracebacks
    assert len(tracebacks) <= 1, tracebacks
    circuit = [r.getMessage() for r in caplog.records if r.name == "gate.store.circuit"]
    opened = sum(m.startswith("redis unavailable") for m in circuit)
    closed = sum(m.startswith("redis reachable again") for m in circuit)
    return opened, closed


async def books_balance(server: RedisServer) -> None:
    """docs/design.md §11 holds for every workspace of the private Redis after the outage."""
    redis = Redis.from_url(server.url)
    try:
        created = [m.decode() for m in await redis.smembers(keys.WORKSPACES)]
        problems, _ = await check_all(redis, created)
        assert not problems, problems
    finally:
        await redis.aclose()


async def test_redis_killed_every_route_503_at_once_then_recovers(
    gate: Client, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ws = await setup_call(gate)
    os.kill(own_redis.pid, signal.SIGKILL)
    await asyncio.to_thread(own_redis.stop)  # reaps it

    seconds = await answers_503(gate, ws)
    assert max(seconds) < FAST_S, seconds
    metrics = await (await gate.get("/metrics")).text()
    assert "gate_redis_up 0.0" in metrics
    await asyncio.sleep(0.6)  # the ticker and the outbox keep trying meanwhile, quietly
    assert outage_lines(caplog) == (1, 0)

    # Same port, same AOF: Gate notices by itself, no restart.
    back = await asyncio.to_thread(
        RedisServer.start, own_redis.data_dir, port=own_redis.port, appendfsync="always"
    )
    try:
        assert await wait_ready(gate, within_s=3.0) < 3.0
        resp = await gate.post("/v1/calls/c-live/end", json={"duration_s": 5}, headers=ws["switch"])
        assert resp.status == 200, await resp.text()
        resp = await gate.get("/v1/wallet", headers=ws["admin"])
        if resp.status == 503:  # a slow moment on a loaded machine: what Retry-After is for
            await asyncio.sleep(0.2)
            resp = await gate.get("/v1/wallet", headers=ws["admin"])
        assert resp.status == 200
        assert (await resp.json())["reserved_usd"] == 0
        assert outage_lines(caplog) == (1, 1)
        assert "gate_redis_up 1.0" in await (await gate.get("/metrics")).text()
        await books_balance(back)
    finally:
        await gate.close()  # the app stops while its Redis is still there, then Redis
        back.stop()


async def test_redis_paused_answers_503_within_the_deadline_then_recovers(
    gate: Client, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ws = await setup_call(gate)
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        await paused_answers(gate, ws, caplog)
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    assert await wait_ready(gate, within_s=3.0) < 3.0
    resp = await gate.get("/v1/wallet", headers=ws["admin"])
    assert resp.status == 200
    assert outage_lines(caplog) == (1, 1)
    await books_balance(own_redis)


async def test_circuit_opens_after_timeouts_in_a_row_not_one() -> None:
    circuit = Circuit(open_after=3, open_after_s=0.0)
    circuit.failed(RedisTimeoutError("slow"))
    circuit.failed(RedisTimeoutError("slow"))
    circuit.ok()  # an answer in between: a slow moment, not an outage
    circuit.failed(RedisTimeoutError("slow"))
    circuit.failed(RedisTimeoutError("slow"))
    assert not circuit.is_open
    circuit.check()
    circuit.failed(RedisTimeoutError("slow"))
    assert circuit.is_open
    with pytest.raises(RedisUnavailable):
        circuit.check()
    assert circuit.refused == 1


async def test_a_stall_that_times_out_everything_at_once_does_not_open_it() -> None:
    circuit = Circuit(open_after=3, open_after_s=0.2)
    for _ in range(20):  # every command in flight, at the same instant
        circuit.failed(RedisTimeoutError("stalled loop"))
    assert not circuit.is_open
    circuit.ok()
    for _ in range(20):
        circuit.failed(RedisTimeoutError("stalled loop"))
    await asyncio.sleep(0.25)
    circuit.failed(RedisTimeoutError("still nothing"))  # the failures go on: an outage
    assert circuit.is_open
    connect_timeout = Circuit(open_after=3, open_after_s=10.0)
    connect_timeout.failed(RedisTimeoutError("Timeout connecting"), connecting=True)
    assert not connect_timeout.is_open  # slow to connect is a busy host, not a refusal


async def test_refused_connection_opens_the_circuit_at_once_and_fails_fast() -> None:
    circuit = Circuit()
    client = await connect(
        f"redis://127.0.0.1:{free_port()}", circuit=circuit, socket_timeout=DEADLINE_S
    )
    try:
        with pytest.raises(RedisConnectionError):
            await client.get("x")
        assert circuit.is_open
        started = time.perf_counter()
        for _ in range(100):
            with pytest.raises(RedisUnavailable):
                await client.get("x")
        assert time.perf_counter() - started < FAST_S  # no connect attempts, no waits
    finally:
        await circuit.stop()
        await client.aclose()


async def test_script_calls_wait_one_deadline_but_a_start_waits_for_its_own(
    aiohttp_client: Callable[..., Awaitable[Client]],
    settings: Settings,
    own_redis: RedisServer,
) -> None:
    # A warm auth cache, as in production: the script call is what meets the paused Redis.
    quick = replace(
        settings, redis_url=own_redis.url, redis_timeout_ms=int(DEADLINE_S * 1000), auth_cache_s=60
    )
    gate = await aiohttp_client(create_app(quick, clock=ManualClock()))
    ws = await setup_call(gate)
    assert (await gate.get("/v1/wallet", headers=ws["switch"])).status == 200
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        started = time.perf_counter()
        end = await gate.post("/v1/calls/c-live/end", json={"duration_s": 5}, headers=ws["switch"])
        end_s = time.perf_counter() - started
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    assert end.status == 503 and (await end.json())["error"]["code"] == "gate_unavailable"
    assert DEADLINE_S * 0.9 <= end_s < DEADLINE_S + FAST_S, end_s
    assert await wait_ready(gate, within_s=3.0) < 3.0

    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        started = time.perf_counter()
        start = await gate.post(
            "/v1/calls", json={**start_body("c-late"), "timeout_ms": 600}, headers=ws["switch"]
        )
        start_s = time.perf_counter() - started
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    # Answering the start at the per-command deadline could let its script commit after the
    # 503; it answers at its own deadline instead, and the script refuses to commit past it.
    assert start.status == 503 and (await start.json())["error"]["code"] == "gate_timeout"
    assert 0.55 <= start_s < 0.6 + FAST_S, start_s
    assert await wait_ready(gate, within_s=3.0) < 3.0
    resp = await gate.get("/v1/calls/c-late", headers=ws["admin"])
    assert resp.status == 404  # never committed

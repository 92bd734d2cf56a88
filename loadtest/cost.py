"""What one call operation costs: Gate CPU and Redis CPU per op, by operation type, from
`/proc`, `INFO cpu` and `INFO commandstats` deltas around each phase of one run.

`python -m loadtest.cost` (see `loadtest/bench.py` for the command line) runs these phases
over HTTP against `gate serve` on its own private Redis, each after the one before:

  bare       the constant-JSON aiohttp handler (loadtest/bare.py): the Python HTTP floor
  start      POST /v1/calls, answered: false (a ringing call: not ticked yet)
  answer     POST /v1/calls/{id}/answer
  tick       nothing sent: Gate's ticker ticks every live call once (ops = calls ticked)
  heartbeat  POST /v1/calls/{id}/heartbeat
  end        POST /v1/calls/{id}/end

Ticks that fall inside the heartbeat and end phases are charged at the tick phase's own
per-call cost and taken out, so each row is the cost of its own operation.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from loadtest import tenants
from loadtest.api import Api, bearer
from loadtest.books import WsBooks
from loadtest.procs import BareServer, GateServer, cpu_seconds
from loadtest.stats import Recorder, histogram, record_us, samples, scrape, summary_ms
from loadtest.wire import Client, WireError

FROM, TO = "+14155550100", "+14155550123"
BALANCE_USD = Decimal(1_000_000)
# Commands that are the harness's own probes or the script calls themselves, not the work
# a script does inside Redis.
_NOT_WORK = frozenset({"info", "config", "ping", "client", "hello", "select", "script"})
_SCRIPT_CALLS = frozenset({"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"})
_TICKED = "gate_ticker_lag_seconds_count"
_SCRIPT = re.compile(r'script="([^"]+)"')


@dataclass(frozen=True)
class RedisStats:
    """`INFO cpu` (main thread and total, seconds) and `INFO commandstats` at one moment."""

    cpu_s: float
    commands: dict[str, tuple[int, int]]  # command -> (calls, usec)

    def minus(self, before: RedisStats) -> RedisStats:
        out: dict[str, tuple[int, int]] = {}
        for name, (calls, usec) in self.commands.items():
            c0, u0 = before.commands.get(name, (0, 0))
            if calls - c0:
                out[name] = (calls - c0, usec - u0)
        return RedisStats(self.cpu_s - before.cpu_s, out)

    @property
    def script_calls(self) -> int:
        return sum(c for n, (c, _) in self.commands.items() if n in _SCRIPT_CALLS)

    @property
    def script_usec(self) -> int:
        return sum(u for n, (_, u) in self.commands.items() if n in _SCRIPT_CALLS)

    @property
    def work(self) -> dict[str, int]:
        """Calls of each data command (those scripts run inside Redis included)."""
        return {
            n: c
            for n, (c, _) in self.commands.items()
            if n not in _SCRIPT_CALLS and n not in _NOT_WORK
        }


async def redis_stats(client: Redis) -> RedisStats:
    cpu = await client.info("cpu")
    stats = await client.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_").lower(): (int(v["calls"]), int(v["usec"]))
        for name, v in stats.items()
    }
    return RedisStats(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), commands)


@dataclass
class Phase:
    """One operation type's window: what was sent, what it cost."""

    name: str
    build: str
    ops: int = 0
    errors: int = 0
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    redis: RedisStats = field(default_factory=lambda: RedisStats(0.0, {}))
    ticked: int = 0  # calls the ticker ticked inside the window
    lua: dict[str, float] = field(default_factory=dict)  # Gate's script calls, by script
    latency: Any = field(default_factory=histogram)

    def per_op(self, tick: Phase | None = None) -> dict[str, Any]:
        """µs and commands per op; ticks inside the window charged at `tick`'s rates."""
        server, redis_cpu = self.server_cpu_s, self.redis_cpu_s
        script_us, scripts = float(self.redis.script_usec), float(self.redis.script_calls)
        work = dict(self.redis.work)
        if tick is not None and tick.ops and self.ticked and self.name != "tick":
            share = self.ticked / tick.ops
            server -= tick.server_cpu_s * share
            redis_cpu -= tick.redis_cpu_s * share
            script_us -= tick.redis.script_usec * share
            scripts -= tick.redis.script_calls * share
            for name, calls in tick.redis.work.items():
                work[name] = work.get(name, 0) - round(calls * share)
        n = max(self.ops, 1)
        lat = summary_ms(self.latency)
        return {
            "phase": self.name,
            "build": self.build,
            "ops": self.ops,
            "errors": self.errors,
            "ops_per_s": round(self.ops / max(self.seconds, 1e-9), 1),
            "server_us_per_op": round(max(server, 0.0) * 1e6 / n, 1),
            "redis_us_per_op": round(max(redis_cpu, 0.0) * 1e6 / n, 1),
            "script_us_per_op": round(max(script_us, 0.0) / n, 1),
            "scripts_per_op": round(max(scripts, 0.0) / n, 3),
            "redis_commands_per_op": round(max(sum(work.values()), 0) / n, 2),
            "commands": {k: round(v / n, 3) for k, v in sorted(work.items()) if v > 0},
            "ticked_in_window": self.ticked,
            "lua_calls_per_op": {k: round(v / n, 3) for k, v in sorted(self.lua.items()) if v},
            "p50_ms": lat["p50"],
            "p99_ms": lat["p99"],
        }


class Target:
    """One Gate build under test: its process, HTTP client, Redis and metrics."""

    def __init__(self, name: str, gate: GateServer, concurrency: int, timeout_s: float) -> None:
        self.name = name
        self.gate = gate
        self.client = Client("127.0.0.1", gate.port, limit=concurrency, timeout_s=timeout_s)
        self.metrics = Client("127.0.0.1", gate.port, limit=1, timeout_s=timeout_s)
        assert gate.redis_url is not None, "gate serve did not write its Redis URL"
        self.redis = Redis.from_url(gate.redis_url)
        self.wallets: list[WsBooks] = []

    async def counters(self) -> tuple[int, dict[str, float]]:
        """Calls Gate's ticker has ticked so far, and its script calls by script."""
        text = await scrape(self.metrics)
        lua: dict[str, float] = {}
        for labels, value in samples(text, "gate_lua_calls_total").items():
            script = _SCRIPT.search(labels)
            if script is not None:
                lua[script[1]] = lua.get(script[1], 0.0) + value
        return int(_unlabelled(text, _TICKED)), lua

    async def close(self) -> None:
        await self.client.close()
        await self.metrics.close()
        await self.redis.aclose()


def _unlabelled(text: str, metric: str) -> float:
    """An unlabelled sample (`name value`)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == metric:
            return float(value)
    return 0.0


async def _send_all(
    client: Client, requests: Iterable[tuple[bytes, int]], concurrency: int, phase: Phase
) -> None:
    """Send pre-encoded requests with `concurrency` in flight; time each; count non-`ok`s."""
    it = iter(requests)

    async def worker() -> None:
        for raw, ok in it:
            t = time.perf_counter_ns()
            try:
                resp = await client.send(raw)
            except (WireError, TimeoutError):
                phase.errors += 1
                continue
            if resp.status != ok:
                phase.errors += 1
                continue
            phase.ops += 1
            record_us(phase.latency, (time.perf_counter_ns() - t) / 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(
    target: Target, phase: Phase, requests: Iterable[tuple[bytes, int]] | None,
    concurrency: int, *, idle_s: float = 0.0, server: BareServer | None = None,
    client: Client | None = None,
) -> Phase:  # fmt: skip
    """Run one phase: send `requests` (or wait `idle_s` for the ticker) between snapshots.

    With `server` (the bare handler) the requests go to it through `client`, and its CPU
    is the server's; Redis is not involved.
    """
    pid, kind = (target.gate.pid, "gate") if server is None else (server.child.proc.pid, "bare")
    cpu0, stats0 = cpu_seconds(pid, kind), await redis_stats(target.redis)
    ticked0, lua0 = await target.counters()
    started = time.perf_counter()
    if requests is not None:
        await _send_all(client or target.client, requests, concurrency, phase)
    else:
        await asyncio.sleep(idle_s)
    phase.seconds = time.perf_counter() - started
    cpu1, stats1 = cpu_seconds(pid, kind), await redis_stats(target.redis)
    ticked1, lua1 = await target.counters()
    phase.ticked = ticked1 - ticked0
    phase.lua = {k: v - lua0.get(k, 0.0) for k, v in lua1.items()} if server is None else {}
    if requests is None:
        phase.ops = phase.ticked
    phase.server_cpu_s = cpu1[kind] - cpu0[kind]
    phase.redis = stats1.minus(stats0) if kind == "gate" else RedisStats(0.0, {})
    phase.redis_cpu_s = phase.redis.cpu_s  # INFO cpu: finer than /proc's 10 ms ticks
    return phase


async def bare_phase(target: Target, calls: int, concurrency: int, log: Path) -> Phase:
    """The bare handler answering `calls` starts, after a short warm-up."""
    server = await BareServer.start(log)
    client = Client("127.0.0.1", server.port, limit=concurrency, timeout_s=10)
    body = orjson.dumps({"call_id": "x", "direction": "outbound", "from": FROM, "to": TO})
    raw = client.encode("POST", "/v1/calls", body, bearer("gk_ws_0000000000000000_bare"))
    try:
        warm = itertools.repeat((raw, 200), 500)
        await _send_all(client, warm, concurrency, Phase("warm-up", "bare"))
        requests = itertools.repeat((raw, 200), calls)
        return await measure(target, Phase("bare", "bare"), requests, concurrency,
                             server=server, client=client)  # fmt: skip
    finally:
        await client.close()
        server.stop()


async def setup(target: Target, wallets: int, run_id: str) -> None:
    api = Api(target.client, Recorder())
    target.wallets = await tenants.create_all(
        api, target.gate.platform_key, None, wallets, (BALANCE_USD,), run_id,
        max_concurrent=100_000,
    )  # fmt: skip


def _requests(
    target: Target, calls: list[tuple[WsBooks, str]], op: str
) -> Iterable[tuple[bytes, int]]:
    enc = target.client.encode
    for wb, call_id in calls:
        key = bearer(wb.switch_key)
        if op == "start":
            body = {"call_id": call_id, "direction": "outbound", "from": FROM, "to": TO,
                    "answered": False}  # fmt: skip
            yield enc("POST", "/v1/calls", orjson.dumps(body), key), 201
        elif op == "answer":
            yield enc("POST", f"/v1/calls/{call_id}/answer", b"{}", key), 200
        elif op == "heartbeat":
            body = {"elapsed_s": 1, "seq": 1}
            yield enc("POST", f"/v1/calls/{call_id}/heartbeat", orjson.dumps(body), key), 200
        else:
            body = {"duration_s": 1}
            yield enc("POST", f"/v1/calls/{call_id}/end", orjson.dumps(body), key), 200


async def call_phases(
    target: Target, calls_n: int, concurrency: int, tick_s: int, run_id: str
) -> list[Phase]:
    """start, answer, tick, heartbeat, end over `calls_n` calls spread over the wallets."""
    wallets = target.wallets
    calls = [
        (wallets[i % len(wallets)], f"cost-{run_id}-{target.name}-{i}") for i in range(calls_n)
    ]
    phases: dict[str, Phase] = {}
    for op in ("start", "answer", "tick", "heartbeat", "end"):
        phase = Phase(op, target.name)
        if op == "tick":
            # Each answered call is due tick_s after its answer: one window of tick_s ticks
            # every call once (the answer phase took far less than tick_s).
            await measure(target, phase, None, concurrency, idle_s=tick_s + 0.5)
        else:
            await measure(target, phase, list(_requests(target, calls, op)), concurrency)
        phases[op] = phase
    return list(phases.values())


def rows(phases: list[Phase]) -> list[dict[str, Any]]:
    tick = {p.build: p for p in phases if p.name == "tick"}
    return [p.per_op(tick.get(p.build)) for p in phases]


async def live_calls(
    target: Target, n: int, concurrency: int, label: str
) -> list[tuple[WsBooks, str]]:
    """Start `n` answered calls and leave them up (the ticker then ticks each every tick_s)."""
    wallets = target.wallets
    calls = [(wallets[i % len(wallets)], f"live-{label}-{i}") for i in range(n)]
    enc = target.client.encode

    def starts() -> Iterable[tuple[bytes, int]]:
        for wb, call_id in calls:
            body = {"call_id": call_id, "direction": "outbound", "from": FROM, "to": TO}
            yield enc("POST", "/v1/calls", orjson.dumps(body), bearer(wb.switch_key)), 201

    phase = Phase("live", target.name)
    await _send_all(target.client, starts(), concurrency, phase)
    if phase.errors:
        raise RuntimeError(f"{phase.errors} of {n} background calls did not start")
    return calls


async def end_calls(target: Target, calls: list[tuple[WsBooks, str]], concurrency: int) -> None:
    await _send_all(target.client, _requests(target, calls, "end"), concurrency,
                    Phase("end", target.name))  # fmt: skip

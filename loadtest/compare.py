"""`--compare`: one reserve workload (start a call, end it) through four stacks, in one run."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import orjson
from rich.console import Console

from loadtest import tenants
from loadtest.api import Api, bearer
from loadtest.books import WsBooks
from loadtest.options import Options
from loadtest.pgpeer import PgPeer
from loadtest.pricing import Card, Price
from loadtest.procs import BareServer, cpu_seconds
from loadtest.stats import Recorder, histogram, record_us, samples, scrape, summary_ms
from loadtest.wire import Client, WireError

WARMUP_S = 1.0
BALANCE_USD = Decimal(100_000)
FROM, TO = "+14155550100", "+14155550123"
_SCRIPT = re.compile(r'script="([^"]+)"')
MEAN_CALL_S, MAX_CALL_S = 3.0, 5


@dataclass
class Leg:
    """What one leg measured (only inside its timed window)."""

    name: str
    wallets: int | None
    server: str  # the process kind that serves this leg: bare | gate | harness | postgres
    latency: Any = field(default_factory=histogram)
    start_latency: Any = field(default_factory=histogram)
    ops: int = 0
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    measuring: bool = False
    spent: dict[int, int] = field(default_factory=dict)  # wallet index -> micros billed
    usage: dict[str, float] = field(default_factory=dict)  # CPU s and Lua calls in the window

    def op(self, started_ns: int, ok: bool, start: bool = False) -> None:
        if not self.measuring:
            return
        if not ok:
            self.errors += 1
            return
        us = (time.perf_counter_ns() - started_ns) / 1000
        self.ops += 1
        record_us(self.latency, us)
        if start:
            record_us(self.start_latency, us)

    def to_json(self) -> dict[str, Any]:
        lat = summary_ms(self.latency)
        start = summary_ms(self.start_latency)
        secs = max(self.seconds, 1e-9)
        return {
            "name": self.name,
            "wallets": self.wallets,
            "seconds": round(self.seconds, 3),
            "ops": self.ops,
            "ops_per_s": round(self.ops / secs, 1),
            "calls_per_s": round(self.calls / secs, 1),
            "errors": self.errors,
            "p50_ms": lat["p50"],
            "p90_ms": lat["p90"],
            "p99_ms": lat["p99"],
            "p99_9_ms": lat["p99_9"],
            "max_ms": lat["max"],
            "start_p50_ms": start["p50"],
            "start_p99_ms": start["p99"],
            "server": self.server,
            "cpu_cores": {
                k: round(v / secs, 2) for k, v in self.usage.items() if not k.startswith("lua:")
            },
            "cpu_us_per_op": {
                k: round(v * 1e6 / max(self.ops, 1), 1)
                for k, v in self.usage.items()
                if not k.startswith("lua:") and v > 0
            },
            "lua_calls_per_op": {
                k[4:]: round(v / max(self.ops, 1), 3)
                for k, v in self.usage.items()
                if k.startswith("lua:") and v > 0
            },
        }


Call = Callable[[random.Random, Leg, int], Awaitable[None]]
Snapshot = Callable[[], Awaitable[dict[str, float]]]


async def drive(leg: Leg, concurrency: int, seconds: float, call: Call, snapshot: Snapshot) -> Leg:
    """`concurrency` workers loop `call` until the timed window is over; every call finishes.

    `snapshot` is taken as the window opens and closes: the difference (CPU seconds per
    process kind, Gate's Lua calls per script) is the leg's `usage`.
    """
    stop = False

    async def worker(i: int) -> None:
        rng = random.Random(i)
        n = 0
        while not stop:
            n += 1
            await call(rng, leg, i * 10_000_000 + n)

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup(seconds))
    before = await snapshot()
    leg.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    leg.measuring = False
    leg.seconds = time.perf_counter() - started
    after = await snapshot()
    leg.usage = {k: v - before.get(k, 0.0) for k, v in after.items()}
    stop = True
    await asyncio.gather(*tasks)
    return leg


def warmup(seconds: float) -> float:
    """Unmeasured time before a leg's window: 1 s, less for very short legs."""
    return min(WARMUP_S, seconds / 4)


def talk_time(rng: random.Random) -> int:
    """A call's claimed duration. The legs end each call at once, and Gate clamps a claim to
    its own clock (time since answer + GATE_CLOCK_TOLERANCE_S, 5 s): stay inside that."""
    return min(int(rng.expovariate(1 / MEAN_CALL_S)), MAX_CALL_S)


# -- the legs ----------------------------------------------------------------------------


async def bare_leg(opts: Options, snapshot: Snapshot) -> Leg:
    server = await BareServer.start(opts.out / "bare.log")
    client = Client("127.0.0.1", server.port, limit=opts.concurrency, timeout_s=opts.timeout_s)
    body = orjson.dumps({"call_id": "x", "direction": "outbound", "from": FROM, "to": TO})
    raw = client.encode("POST", "/v1/calls", body, bearer("gk_ws_0000000000000000_bare"))

    async def call(rng: random.Random, leg: Leg, n: int) -> None:
        t = time.perf_counter_ns()
        try:
            resp = await client.send(raw)
        except (WireError, TimeoutError):
            leg.op(t, False)
            return
        leg.op(t, resp.status == 200, start=True)
        if leg.measuring:
            leg.calls += 1

    try:

        async def bare_snapshot() -> dict[str, float]:
            return cpu_seconds(server.child.proc.pid, "bare") | {
                k: v for k, v in (await snapshot()).items() if k.startswith("lua:")
            }

        leg = Leg("bare aiohttp", None, "bare")
        return await drive(leg, opts.concurrency, opts.compare_s, call, bare_snapshot)
    finally:
        await client.close()
        server.stop()


async def http_leg(
    opts: Options, client: Client, wallets: list[WsBooks], price: Price, run_id: str,
    snapshot: Snapshot,
) -> Leg:  # fmt: skip
    async def call(rng: random.Random, leg: Leg, n: int) -> None:
        w = rng.randrange(len(wallets))
        key = bearer(wallets[w].switch_key)
        call_id = f"cmp-{run_id}-h{len(wallets)}-{n}"
        body = {"call_id": call_id, "direction": "outbound", "from": FROM, "to": TO}
        t = time.perf_counter_ns()
        try:
            resp = await client.request("POST", "/v1/calls", orjson.dumps(body), key)
        except (WireError, TimeoutError):
            leg.op(t, False)
            return  # the end below would not know whether to bill; count it and move on
        leg.op(t, resp.status == 201, start=True)
        if resp.status != 201:
            return
        seconds = talk_time(rng)
        end = orjson.dumps({"duration_s": seconds})
        for _ in range(5):
            t = time.perf_counter_ns()
            try:
                resp = await client.request("POST", f"/v1/calls/{call_id}/end", end, key)
            except (WireError, TimeoutError):
                leg.op(t, False)
                continue
            leg.op(t, resp.status == 200)
            if resp.status == 200:
                leg.spent[w] = leg.spent.get(w, 0) + price.cost(seconds)
                if leg.measuring:
                    leg.calls += 1
                return

    leg = Leg("gate http", len(wallets), "gate")
    return await drive(leg, opts.concurrency, opts.compare_s, call, snapshot)


async def lua_leg(
    opts: Options, redis_url: str, rates: str | None, wallets: list[WsBooks], price: Price,
    run_id: str, snapshot: Snapshot,
) -> Leg:  # fmt: skip
    from gate.calls.service import Calls, RateBook, StartParams
    from gate.clock import SystemClock
    from gate.context import Context
    from gate.errors import GateError
    from gate.settings import Settings
    from gate.store import redis_client
    from gate.store.scripts import Scripts

    client = await redis_client.connect(redis_url)
    try:
        scripts = Scripts(client)
        await scripts.load()
        settings = Settings(
            redis_url=redis_url, tick_s=opts.tick_s, buffer_s=opts.buffer_s,
            inbound_grace_s=opts.grace_s, rates=rates,
        )  # fmt: skip
        calls = Calls(Context(client, scripts, SystemClock(), settings), RateBook(rates))

        async def call(rng: random.Random, leg: Leg, n: int) -> None:
            w = rng.randrange(len(wallets))
            ws = wallets[w].id
            call_id = f"cmp-{run_id}-l{len(wallets)}-{n}"
            params = StartParams(call_id, "outbound", FROM, TO, "voice", None, None, None, True)
            t = time.perf_counter_ns()
            try:
                await calls.start(ws, params)
            except (GateError, OSError) as err:
                leg.op(t, False)
                if isinstance(err, GateError):
                    return
                raise
            leg.op(t, True, start=True)
            seconds = talk_time(rng)
            t = time.perf_counter_ns()
            await calls.end(ws, call_id, seconds, None, params)
            leg.op(t, True)
            leg.spent[w] = leg.spent.get(w, 0) + price.cost(seconds)
            if leg.measuring:
                leg.calls += 1

        leg = Leg("gate lua", len(wallets), "harness")
        return await drive(leg, opts.concurrency, opts.compare_s, call, snapshot)
    finally:
        await client.aclose()


async def pg_leg(
    opts: Options, pool: Any, wallets: int, price: Price, run_id: str, snapshot: Snapshot
) -> tuple[Leg, tuple[list[str], int]]:
    peer = PgPeer(pool, f"gate_lt_{run_id}_{wallets}", price.cost(opts.buffer_s))
    balance = int(BALANCE_USD * 1_000_000)
    await peer.drop()
    await peer.create(wallets, balance)
    try:

        async def call(rng: random.Random, leg: Leg, n: int) -> None:
            w = rng.randrange(wallets)
            call_id = f"cmp-{run_id}-p{wallets}-{n}"
            t = time.perf_counter_ns()
            ok = await peer.start(w, call_id)
            leg.op(t, ok, start=True)
            if not ok:
                return
            seconds = talk_time(rng)
            t = time.perf_counter_ns()
            await peer.end(w, call_id, price.cost(seconds))
            leg.op(t, True)
            leg.spent[w] = leg.spent.get(w, 0) + price.cost(seconds)
            if leg.measuring:
                leg.calls += 1

        leg = Leg("pg row lock", wallets, "postgres")
        await drive(leg, opts.concurrency, opts.compare_s, call, snapshot)
        return leg, await peer.check(balance, leg.spent)
    finally:
        await peer.drop()


async def check_wallets(
    api: Api, wallets: list[WsBooks], leg: Leg, plan: bool = False
) -> tuple[list[str], int]:
    """Gate's wallets after a leg: opening - what the leg billed, to the micro, none reserved.
    Under a plan, what the commitments paid (committed - available) comes off the bill."""
    problems, off = [], 0
    for i, wb in enumerate(wallets):
        w = await tenants.wallet(api, wb.admin_key, wb.id)
        want = wb.expected_balance - leg.spent.get(i, 0)
        if plan:
            for b in (await tenants.buckets(api, wb.admin_key, wb.id)).values():
                if b["type"] == "commitment":
                    want += int(b["committed_micros"]) - int(b["available_micros"])
        if w["balance_micros"] != want or w["reserved_micros"] != 0:
            off += abs(w["balance_micros"] - want) + abs(w["reserved_micros"])
            problems.append(
                f"{leg.name} {wb.id}: balance {w['balance_micros']} reserved "
                f"{w['reserved_micros']}, books {want}"
            )
    return problems, off


def _ratio(a: Leg | None, b: Leg | None) -> float | None:
    if a is None or b is None or not b.ops or not a.ops:
        return None
    return round((a.ops / a.seconds) / (b.ops / b.seconds), 3)


def masked(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(parts.password, "***") if parts.password else url


async def run(
    opts: Options, host: str, port: int, platform_key: str, redis_url: str | None,
    rates: str | None, card: Card, run_id: str, console: Console, gate_pid: int | None,
) -> dict[str, Any]:  # fmt: skip
    """Run the legs --legs names; returns the `compare` section of result.json.

    Legs, each at --concurrency for --compare-s seconds after a short warm-up:
      bare   a constant-JSON aiohttp+uvloop handler (the ceiling of a Python HTTP service)
      http   Gate's API: POST /v1/calls, then POST /v1/calls/{id}/end
      lua    Gate's own domain layer and Lua scripts straight on its Redis (gate.calls.Calls)
      pg     a PostgreSQL row-lock peer: BEGIN; SELECT ... FOR UPDATE; UPDATE; INSERT; COMMIT
    The Gate and PostgreSQL legs run on one hot wallet and on --compare-wallets wallets. One op
    is one start or one end (one decision, one atomic change), so ops/s compare across legs.
    """
    price = card.for_call("voice", "outbound", FROM, TO, None)
    console.print(f"compare: {opts.concurrency} in flight, {opts.compare_s:g} s per leg")
    metrics = Client(host, port, limit=1, timeout_s=opts.timeout_s)

    async def snapshot() -> dict[str, float]:
        out = cpu_seconds(gate_pid)
        for labels, value in samples(await scrape(metrics), "gate_lua_calls_total").items():
            script = _SCRIPT.search(labels)
            if script is not None:
                out[f"lua:{script[1]}"] = out.get(f"lua:{script[1]}", 0.0) + value
        return out

    try:
        return await _legs(opts, host, port, platform_key, redis_url, rates, price, run_id,
                           console, snapshot)  # fmt: skip
    finally:
        await metrics.close()


async def _legs(
    opts: Options, host: str, port: int, platform_key: str, redis_url: str | None,
    rates: str | None, price: Price, run_id: str, console: Console, snapshot: Snapshot,
) -> dict[str, Any]:  # fmt: skip
    legs: dict[tuple[str, int | None], Leg] = {}
    notes: list[str] = []
    problems: list[str] = []
    mismatched = 0
    counts = (1, opts.compare_wallets)

    def show(leg: Leg) -> None:
        j = leg.to_json()
        console.print(
            f"  {leg.name:12} wallets {leg.wallets or '-':>4}: {j['ops_per_s']:>8.0f} ops/s  "
            f"p50 {j['p50_ms']} ms  p99 {j['p99_ms']} ms  errors {leg.errors}"
        )

    if "bare" in opts.legs:
        legs[("bare", None)] = leg = await bare_leg(opts, snapshot)
        show(leg)

    wanted_gate = [leg for leg in ("http", "lua") if leg in opts.legs]
    if wanted_gate:
        client = Client(host, port, limit=opts.concurrency, timeout_s=opts.timeout_s)
        api = Api(client, Recorder())
        try:
            for kind in wanted_gate:
                if kind == "lua" and not redis_url:
                    notes.append(
                        "lua leg skipped: pass --redis-url, the Redis of the Gate at --url"
                    )
                    continue
                # --plan: the lua leg runs again on wallets with that plan, in the same run,
                # so the cost of the credit buckets shows side by side (issue 10).
                plans = [None, opts.plan] if kind == "lua" and opts.plan else [None]
                for count, plan in ((c, p) for c in counts for p in plans):
                    wallets = await tenants.create_all(
                        api, platform_key, None, count, (BALANCE_USD,),
                        f"{run_id}{kind}{count}{plan or ''}", plan=plan,
                    )  # fmt: skip
                    if kind == "http":
                        leg = await http_leg(opts, client, wallets, price, run_id, snapshot)
                    else:
                        assert redis_url is not None
                        leg = await lua_leg(
                            opts, redis_url, rates, wallets, price, f"{run_id}{plan or ''}",
                            snapshot,
                        )  # fmt: skip
                    if plan:
                        leg.name += f" plan {plan}"
                    legs[(kind if plan is None else f"{kind} plan", count)] = leg
                    show(leg)
                    found, off = await check_wallets(api, wallets, leg, plan is not None)
                    problems += found
                    mismatched += off
        finally:
            await client.close()

    if "pg" in opts.legs:
        try:
            import asyncpg

            settings = {"synchronous_commit": opts.pg_sync}
            pool = await asyncpg.create_pool(
                opts.pg_url, min_size=opts.concurrency, max_size=opts.concurrency,
                server_settings=settings, timeout=5,
            )  # fmt: skip
        except (OSError, asyncpg.PostgresError, TimeoutError) as err:
            note = (
                f"PostgreSQL at {masked(opts.pg_url)} is unreachable ({err}); the row-lock peer "
                "was skipped. Point --pg-url at one, e.g. --pg-url "
                "postgresql://USER@127.0.0.1:5432/DB"
            )
            notes.append(note)
            console.print(f"[yellow]{note}[/yellow]")
        else:
            try:
                for count in counts:
                    leg, (found, off) = await pg_leg(opts, pool, count, price, run_id, snapshot)
                    legs[("pg", count)] = leg
                    problems += found
                    mismatched += off
                    show(leg)
            finally:
                await pool.close()

    ratios: dict[str, float | None] = {}
    for count in counts:
        label = "1 wallet" if count == 1 else f"{count} wallets"
        http, lua, pg = legs.get(("http", count)), legs.get(("lua", count)), legs.get(("pg", count))
        ratios[f"lua/pg ({label})"] = _ratio(lua, pg)
        ratios[f"http/pg ({label})"] = _ratio(http, pg)
        ratios[f"http/lua ({label})"] = _ratio(http, lua)
        ratios[f"http/bare ({label})"] = _ratio(http, legs.get(("bare", None)))
    return {
        "concurrency": opts.concurrency,
        "seconds": opts.compare_s,
        "warmup_s": warmup(opts.compare_s),
        "op": "one start (reserve the buffer) or one end (bill, release) of a call",
        "price": {"per_min_micros": price.per_min, "increment": price.increment},
        "pg": {"url": masked(opts.pg_url), "synchronous_commit": opts.pg_sync},
        "legs": [leg.to_json() for leg in legs.values()],
        "ratios": {k: v for k, v in ratios.items() if v is not None},
        "notes": notes,
        "problems": problems,
        "mismatched_micros": mismatched,
        "ok": not problems,
    }

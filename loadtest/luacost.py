"""`python -m loadtest.luacost`: where a call script's Redis time goes, on a private Redis.

For each call operation (start, answer, heartbeat, tick, end) it runs `--calls` of them
through Gate's own domain layer and splits the script's time (`INFO commandstats`, the
EVALSHA's usec) into the Redis commands it ran (their own usec) and the rest: the Lua VM,
building tables, MessagePack. Then it times probes that price one ingredient each:

  empty      `return {0}` with a start's 9 keys and 24 arguments: EVALSHA's floor
  prelude    call_start up to its includes (argument parsing), then return
  includes   the same plus _post, _rating and _call: the helper closures every call
             re-creates, which a FUNCTION LOAD library would create once
  msgpack    one cmsgpack.pack + unpack of a call record
  write      HINCRBY + HSET + ZADD + XADD, a reserve-shaped script's writes
  fcall_empty     the empty probe as a FUNCTION LOAD library function, called by FCALL
  fcall_includes  the includes probe's body inside a library function (closures still
                  made per call); a library that defines the helpers once costs about
                  fcall_empty plus the prelude
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from gate.calls.service import Calls, RateBook, StartParams
from gate.calls.ticker import BATCH
from gate.clock import ManualClock
from gate.context import Context
from gate.settings import Settings
from gate.store import keys
from gate.store.redis_proc import RedisServer
from gate.store.scripts import Scripts, compile_scripts, lua_dir
from gate.tenancy.workspaces import Workspaces
from loadtest.cost import redis_stats

FROM, TO = "+14155550100", "+14155550123"
_RECORD = (
    "{id='c-000001', dir='outbound', svc='voice', from='+14155550100', to='+14155550123', "
    "user='', grp='', nt='any', rate=200000, fee=0, f=60, n=6, buf=60, tk=10, grace=30, "
    "max=14400, t0=1800000000000, ans=1800000000000, bs=0, hz=60, held=200000, cut=0, lim=0, "
    "cs=0, hseq=0, hms=0, ring=120, evm=0, ha=0, clp=0, cmp='', rep=0, r0=200000, g0=60, "
    "m0=-1, b0=1, a0=1, an0=1, h0=1800000060000}"
)


def probes() -> dict[str, str]:
    """The probe scripts' sources (see the module docstring)."""
    start = (lua_dir() / "call_start-9.lua").read_text()
    head = start[: start.index("--!include _post.lua")]
    includes = compile_scripts(
        {"probe-9.lua": start[: start.index("local existing")]}
        | {p.name: p.read_text() for p in lua_dir().glob("_*.lua")}
    )["probe"].source
    return {
        "empty": "return {0}",
        "prelude": head + "\nreturn {0}",
        "includes": includes + "\nreturn {0}",
        "msgpack": f"local c = {_RECORD}\nlocal p = cmsgpack.pack(c)\n"
        "local u = cmsgpack.unpack(p)\nreturn {0}",
        "write": "redis.call('HINCRBY', KEYS[2], 'reserved', 1)\n"
        "redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])\n"
        "redis.call('ZADD', KEYS[4], ARGV[1], ARGV[2])\n"
        "redis.call('XADD', KEYS[6], 'MAXLEN', '~', 1000, '*', 'k', ARGV[2])\nreturn {0}",
    }


async def script_us(client: Redis, before: Any) -> dict[str, Any]:
    """EVALSHA usec per call and each inner command's usec per script call since `before`."""
    used = (await redis_stats(client)).minus(before)
    calls = max(used.script_calls, 1)
    inner = {n: round(u / calls, 2) for n, (c, u) in used.commands.items() if n in used.work and c}
    total = used.script_usec / calls
    return {
        "script_us": round(total, 2),
        "commands_us": round(sum(inner.values()), 2),
        "lua_us": round(total - sum(inner.values()), 2),
        "commands_per_call": round(sum(used.work.values()) / calls, 2),
        "by_command_us": dict(sorted(inner.items(), key=lambda kv: -kv[1])),
    }


async def operations(client: Redis, url: str, n: int) -> dict[str, dict[str, Any]]:
    clock = ManualClock()
    settings = Settings(redis_url=url)
    scripts = Scripts(client)
    await scripts.load()
    ctx = Context(client, scripts, clock, settings)
    calls = Calls(ctx, RateBook(None))
    ws = (await Workspaces(ctx).create("luacost")).id
    k = keys.for_workspace(ws)
    await client.hset(k.wallet, "balance", 10**15)  # a private Redis: the books do not matter
    params = [
        StartParams(f"lc-{i}", "outbound", FROM, TO, "voice", None, None, None, False)
        for i in range(n)
    ]
    out: dict[str, dict[str, Any]] = {}

    async def each(op: str) -> None:
        before = await redis_stats(client)
        if op == "tick":
            while True:  # every call is due: tick them all, BATCH per script run
                reply = await scripts.call(
                    "call_tick", k.call_keys, [clock.now_ms(), BATCH, settings.stale_after_s]
                )
                if int(reply[1]) < BATCH:
                    break
        else:
            for i in range(0, n, 50):  # 50 in flight: batches as the auto-pipeline makes them
                chunk = params[i : i + 50]
                if op == "start":
                    jobs: list[Awaitable[object]] = [
                        calls.start(ws, p, deadline_ms=clock.now_ms() + 5000) for p in chunk
                    ]
                elif op == "answer":
                    jobs = [calls.answer(ws, p.call_id) for p in chunk]
                elif op == "heartbeat":
                    jobs = [calls.heartbeat(ws, p.call_id, 2, 1) for p in chunk]
                else:
                    jobs = [calls.end(ws, p.call_id, 12, None, p) for p in chunk]
                await asyncio.gather(*jobs)
        out[op] = await script_us(client, before)
        if op == "tick":
            out[op]["calls_ticked_per_script"] = round(n / max(
                (await redis_stats(client)).minus(before).script_calls, 1), 1
            )  # fmt: skip

    for op in ("start", "answer", "heartbeat", "tick", "end"):
        if op == "heartbeat":
            clock.advance(2)
        if op == "tick":
            clock.advance(settings.tick_s)
        await each(op)
    return out


async def probe_costs(client: Redis, n: int) -> dict[str, float]:
    k = keys.for_workspace("ws_0000000000000000")
    argv = ["1800000000000", "c-1", "outbound", "voice", FROM, TO, "", "", "any", "200000",
            "0", "60", "6", "60", "10", "30", "14400", "1", "0", "60", "100000", "120", "",
            "0"]  # fmt: skip
    out: dict[str, float] = {}
    for name, source in probes().items():
        sha = await client.script_load(source)
        before = await redis_stats(client)
        for i in range(0, n, 50):
            pipe = client.pipeline(transaction=False)
            for j in range(i, min(i + 50, n)):
                pipe.evalsha(sha, 9, *k.call_keys, argv[0], f"p-{j}", *argv[2:])
            await pipe.execute()
        out[name] = (await script_us(client, before))["script_us"]
    sources = probes()
    library = "#!lua name=gate_probe\n" + "".join(
        f"redis.register_function('{name}', function(KEYS, ARGV)\n{sources[name]}\nend)\n"
        for name in ("empty", "includes")
    )
    await client.function_load(library, replace=True)
    for name in ("empty", "includes"):
        before = await redis_stats(client)
        for i in range(0, n, 50):
            pipe = client.pipeline(transaction=False)
            for j in range(i, min(i + 50, n)):
                pipe.fcall(name, 9, *k.call_keys, argv[0], f"p-{j}", *argv[2:])
            await pipe.execute()
        out[f"fcall_{name}"] = (await script_us(client, before))["script_us"]
    return out


async def main_async(n: int, rounds: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="luacost-") as tmp,
        RedisServer.start(Path(tmp), appendonly=False) as server,
    ):
        client = Redis.from_url(server.url)
        try:
            ops = [await operations(client, server.url, n) for _ in range(rounds)]
            probe = [await probe_costs(client, n) for _ in range(rounds)]
        finally:
            await client.aclose()
    med_ops = {
        op: {f: statistics.median(r[op][f]
             for r in ops) for f in ("script_us", "commands_us", "lua_us", "commands_per_call")}
        | {"by_command_us": ops[-1][op]["by_command_us"]}
        for op in ops[0]
    }  # fmt: skip
    med_probe = {p: round(statistics.median(r[p] for r in probe), 2) for p in probe[0]}
    return {"operations": med_ops, "probes": med_probe, "rounds": rounds, "calls": n}


def main(argv: list[str] | None = None) -> int:
    import orjson
    import uvloop

    p = argparse.ArgumentParser(prog="python -m loadtest.luacost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--calls", type=int, default=2000, help="calls per round (default 2000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, medians shown (default 3)")
    a = p.parse_args(argv)
    result = uvloop.run(main_async(a.calls, a.rounds))
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m loadtest.bench`: the cost of each call operation, side by side, as ratios.

One run measures, for this checkout's Gate and optionally a second build (`--against DIR`,
a source tree such as `git archive main | tar -x -C DIR`), the bare aiohttp handler and
each call operation type (loadtest/cost.py): Gate CPU, Redis CPU, script time and Redis
commands per op. The builds take turns, `--rounds` times, so a noisy shared machine hits
both alike; the table gives each figure's median and spread over the rounds and the
ratios that compare across runs. `--arrival-rate N` adds the open-loop latency of starts
(loadtest/openloop.py), and `--live-calls L` runs it again with L answered calls ticking.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from loadtest import cost, openloop
from loadtest.procs import GateServer

OPS = ("bare", "start", "answer", "tick", "heartbeat", "end")
FIGURES = ("server_us_per_op", "redis_us_per_op", "script_us_per_op", "redis_commands_per_op",
           "ops_per_s", "p99_ms")  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--calls", type=int, default=4000, help="calls per round (default 4000)")
    p.add_argument("--concurrency", type=int, default=50, help="in flight (default 50)")
    p.add_argument("--wallets", type=int, default=100, help="workspaces (default 100)")
    p.add_argument("--rounds", type=int, default=3, help="turns per build (default 3)")
    p.add_argument("--tick-s", type=int, default=10, help="GATE_TICK_S (default 10)")
    p.add_argument("--against", type=Path, help="a second Gate source tree to measure beside")
    p.add_argument(
        "--arrival-rate",
        type=float,
        default=0.0,
        help="open loop: call starts per second on a fixed schedule (0: off)",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="open-loop window (default 10)")
    p.add_argument(
        "--hold-s",
        type=float,
        default=1.0,
        help="open loop: how long each started call stays up (default 1)",
    )
    p.add_argument(
        "--live-calls",
        type=int,
        default=0,
        help="open loop again with this many answered calls ticking (default 0)",
    )
    p.add_argument("--skip-phases", action="store_true", help="open loop only")
    p.add_argument("--out", type=Path, default=Path("loadtest-out"), help="where bench.json goes")
    a = p.parse_args(argv)
    if a.against is not None and not (a.against / "gate" / "__init__.py").exists():
        p.error(f"--against {a.against}: no gate/ package there")
    if a.against is not None:
        a.against = a.against.resolve()
    return a


async def start_target(name: str, src: Path | None, a: argparse.Namespace) -> cost.Target:
    env = {"PYTHONPATH": str(src)} if src is not None else {}
    gate = await GateServer.start(
        tick_s=a.tick_s, buffer_s=60, grace_s=30, workers=1, rates=None,
        log=a.out / f"bench-gate-{name}.log", extra_env=env,
    )  # fmt: skip
    target = cost.Target(name, gate, a.concurrency, timeout_s=10)
    await cost.setup(target, a.wallets, f"{name}{secrets.token_hex(2)}")
    return target


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": min(values), "max": max(values)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """build -> phase -> figure -> {median, min, max} over the rounds."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_fig = out.setdefault(row["build"], {}).setdefault(row["phase"], {})
        for fig in FIGURES:
            if row.get(fig) is not None:
                by_fig.setdefault(fig, []).append(row[fig])
    return {
        b: {ph: {f: spread(v) for f, v in figs.items()} for ph, figs in phases.items()}
        for b, phases in out.items()
    }


def show(console: Console, table: dict[str, dict[str, dict[str, Any]]]) -> None:
    t = Table(title="per operation, median (min-max) over the rounds")
    for col in ("build", "op", "gate µs/op", "redis µs/op", "script µs/op", "cmds/op",
                "ops/s", "p99 ms"):  # fmt: skip
        t.add_column(col)
    for build, phases in table.items():
        for op in OPS:
            figs = phases.get(op)
            if figs is None:
                continue
            cells = [
                f"{figs[f]['median']:g} ({figs[f]['min']:g}-{figs[f]['max']:g})" if f in figs
                else "-"
                for f in FIGURES
            ]  # fmt: skip
            t.add_row(build, op, *cells)
    console.print(t)


def ratios(table: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float]:
    """Same-run ratios: each build's Gate CPU per start and per end over bare's, and
    this build over the other one."""
    out: dict[str, float] = {}
    bare = table.get("bare", {}).get("bare", {}).get("server_us_per_op", {}).get("median")
    for build, phases in table.items():
        if build == "bare":
            continue
        for op in ("start", "end"):
            gate_us = phases.get(op, {}).get("server_us_per_op", {}).get("median")
            if bare and gate_us:
                out[f"{build}: gate µs per {op} / bare µs per op"] = round(gate_us / bare, 2)
        start = phases.get("start", {}).get("redis_us_per_op", {}).get("median")
        end = phases.get("end", {}).get("redis_us_per_op", {}).get("median")
        if start and end:
            out[f"{build}: redis µs/op, start+end average"] = round((start + end) / 2, 1)
    if "this" in table and "against" in table:
        for op in OPS[1:]:
            for fig in ("server_us_per_op", "redis_us_per_op"):
                a = table["this"].get(op, {}).get(fig, {}).get("median")
                b = table["against"].get(op, {}).get(fig, {}).get("median")
                if a and b:
                    out[f"this/against {op} {fig}"] = round(a / b, 2)
    return out


async def main_async(a: argparse.Namespace, console: Console) -> dict[str, Any]:
    a.out.mkdir(parents=True, exist_ok=True)
    sources: list[tuple[str, Path | None]] = [("this", None)]
    if a.against is not None:
        sources.append(("against", a.against))
    targets = [await start_target(name, src, a) for name, src in sources]
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "params": {k: str(v) for k, v in vars(a).items()},
    }
    rows: list[dict[str, Any]] = []
    open_loop: list[dict[str, Any]] = []
    try:
        for r in range(a.rounds):
            for target in targets if r % 2 == 0 else targets[::-1]:
                if a.skip_phases:
                    break
                console.print(f"round {r + 1}: {target.name}")
                log = a.out / "bench-bare.log"
                phases = [await cost.bare_phase(target, a.calls, a.concurrency, log)]
                phases += await cost.call_phases(target, a.calls, a.concurrency, a.tick_s,
                                                 f"r{r}")  # fmt: skip
                rows += cost.rows(phases)
            if a.arrival_rate:
                for target in targets:
                    console.print(f"round {r + 1}: open loop {a.arrival_rate:g}/s {target.name}")
                    open_loop.append(await openloop.run(
                        target, a.arrival_rate, a.seconds, a.hold_s, f"quiet-r{r}"
                    ))  # fmt: skip
                    console.print(open_loop[-1])
        if a.arrival_rate and a.live_calls:
            for target in targets:
                live = await cost.live_calls(target, a.live_calls, a.concurrency, "bg")
                console.print(f"{a.live_calls} answered calls live on {target.name}")
                await asyncio.sleep(a.tick_s)  # their ticks are under way before we measure
                open_loop.append(await openloop.run(
                    target, a.arrival_rate, a.seconds, a.hold_s, f"live{a.live_calls}"
                ))  # fmt: skip
                console.print(open_loop[-1])
                await cost.end_calls(target, live, a.concurrency)
    finally:
        for target in targets:
            await target.close()
            target.gate.stop()
    for row in rows:
        if row["phase"] == "bare":
            row["build"] = "bare"
    table = summarize(rows)
    result |= {"rows": rows, "table": table, "ratios": ratios(table), "open_loop": open_loop}
    result["loadavg_after"] = os.getloadavg()
    show(console, table)
    for k, v in result["ratios"].items():
        console.print(f"  {k}: {v}")
    return result


def main(argv: list[str] | None = None) -> int:
    import uvloop

    a = parse(argv)
    console = Console(stderr=True, width=140)
    result = uvloop.run(main_async(a, console))
    path = a.out / "bench.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

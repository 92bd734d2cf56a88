"""What a run leaves behind: result.json, a PNG of throughput and latency, and a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import orjson
from rich.console import Console
from rich.table import Table


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def plot(path: Path, timeline: list[dict[str, Any]], title: str, window_s: float) -> None:
    """Two panels over the run's seconds: requests/s (and live calls), latency p50/p99."""
    t = [row["t"] for row in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    for ax in (top, bottom):
        ax.axvline(window_s, color="black", lw=0.8, ls=":")
    top.annotate(
        "arrivals stop", (window_s, 0), xytext=(4, 4), textcoords="offset points", fontsize="small"
    )
    top.plot(t, [row["requests"] for row in timeline], label="requests/s", color="tab:blue")
    top.plot(t, [row["starts"] for row in timeline], label="calls started/s", color="tab:green")
    top.plot(t, [row["errors"] for row in timeline], label="errors/s", color="tab:red")
    top.set_ylabel("per second")
    top.grid(alpha=0.3)
    live = top.twinx()
    live.plot(t, [row["live"] for row in timeline], label="live calls", color="tab:gray", ls="--")
    live.set_ylabel("live calls")
    lines = top.get_legend_handles_labels()
    more = live.get_legend_handles_labels()
    top.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize="small")
    top.set_title(title)

    def series(name: str) -> list[float]:
        return [float("nan") if row[name] is None else row[name] for row in timeline]

    bottom.plot(t, series("p50_ms"), label="all requests p50", color="tab:blue")
    bottom.plot(t, series("p99_ms"), label="all requests p99", color="tab:orange")
    bottom.plot(t, series("start_p99_ms"), label="POST /v1/calls p99", color="tab:purple")
    bottom.set_yscale("log")
    bottom.set_ylabel("latency, ms (log)")
    bottom.set_xlabel("seconds since the first arrival")
    bottom.grid(alpha=0.3, which="both")
    bottom.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_compare(path: Path, compare: dict[str, Any], title: str) -> None:
    """Bars of ops/s per leg, with each leg's p99 written on its bar."""
    legs = compare["legs"]
    names = [f"{leg['name']}\n{'' if leg['wallets'] is None else leg['wallets']}"
             f"{'' if leg['wallets'] is None else ' wallet' + ('s' if leg['wallets'] > 1 else '')}"
             for leg in legs]  # fmt: skip
    fig, ax = plt.subplots(figsize=(11, 5))
    bars = ax.bar(names, [leg["ops_per_s"] for leg in legs], color="tab:blue")
    for bar, leg in zip(bars, legs, strict=True):
        ax.annotate(
            f"{leg['ops_per_s']:.0f}/s\np99 {_ms(leg['p99_ms'])} ms",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center", va="bottom", fontsize="small",
        )  # fmt: skip
    ax.set_ylabel("ops/s (one op = one start or one end)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _us(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


def _lost_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for lost ends and no-heartbeat switches, when the run had any."""
    rows: list[tuple[str, str]] = []
    lost = result.get("lost_ends", {})
    if lost.get("count"):
        by = ", ".join(f"{k} {v}" for k, v in lost["by"].items())
        rows += [
            ("lost ends (ended by)", f"{lost['count']} ({by})"),
            ("lost end most billed beyond true",
             f"{lost['max_over_s']} s = {lost['max_over_micros']} micros"),
            ("lost end most left unbilled",
             f"{lost['max_under_s']} s = {lost['max_under_micros']} micros"),
        ]  # fmt: skip
    nohb = result.get("no_heartbeat", {})
    if nohb.get("calls"):
        rows.append(
            ("no-heartbeat calls / at hangup_at / cut early",
             f"{nohb['calls']} / {nohb['hung_up_at_hangup_at']} / {nohb['early_cuts']}")
        )  # fmt: skip
    if result.get("syncs", {}).get("sent"):
        syncs = result["syncs"]
        rows.append(("syncs sent / lost ends they ended",
                     f"{syncs['sent']} / {syncs['lost_ends_ended']}"))  # fmt: skip
    return rows


def summary(console: Console, result: dict[str, Any]) -> None:
    """The final tables: latency per route, then the run's figures and the verdict."""
    lat = Table(title="Latency per route (ms)")
    for col in ("route", "count", "p50", "p90", "p99", "p99.9", "max"):
        lat.add_column(col, justify="right" if col != "route" else "left")
    for route, s in result.get("latency_ms", {}).items():
        lat.add_row(
            route, str(s["count"]), _ms(s["p50"]), _ms(s["p90"]), _ms(s["p99"]),
            _ms(s["p99_9"]), _ms(s["max"]),
        )  # fmt: skip
    console.print(lat)
    rec = result["reconciliation"]
    figures = Table(title="Run")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    rows = [
        ("calls attempted / started", f"{result['calls_attempted']} / {result['calls_started']}"),
        ("starts per second", f"{result['starts_per_s']:.1f}"),
        ("refusals (402/429)", str(result["calls_refused"])),
        ("hang-ups", ", ".join(f"{k} {v}" for k, v in sorted(result["hangups"].items()))),
        ("errors", str(result["error_count"])),
        ("cut delay p50 / p99 ms", f"{_ms(result['cut_delay_ms']['p50'])} / "
                                   f"{_ms(result['cut_delay_ms']['p99'])}"),
        ("ticker lag p99 ms (bucket)", _ms(result["ticker_lag_ms"].get("p99"))),
        ("webhooks unique / dup / bad sig",
         f"{result['webhooks']['unique']} / {result['webhooks']['duplicates']} / "
         f"{result['webhooks']['signature_failures']}"),
        ("leakage", f"{result['leakage_s']} s = {result['leakage_micros']} micros"),
        *_lost_rows(result),
        ("overspend micros", str(result["overspend_micros"])),
        ("mismatched micros", str(result["mismatched_micros"])),
    ]  # fmt: skip
    for name, value in rows:
        figures.add_row(name, value)
    console.print(figures)
    verdict = "[green]RECONCILED[/green]" if rec["ok"] else "[red]MISMATCH[/red]"
    console.print(f"{verdict}: {len(rec['workspaces'])} workspaces, "
                  f"{rec['problem_count']} problems; {result['out']}")  # fmt: skip
    for problem in rec["problems"][:10]:
        console.print(f"  [red]{problem}[/red]")


def compare_table(console: Console, compare: dict[str, Any]) -> None:
    table = Table(
        title=f"Reserve workload at {compare['concurrency']} in flight, "
        f"{compare['seconds']:g} s per leg (one op = one start or one end)"
    )
    cols = ("leg", "wallets", "ops/s", "p50 ms", "p99 ms", "errors", "server µs/op",
            "redis µs/op")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "leg" else "right")
    for leg in compare["legs"]:
        cpu = leg["cpu_us_per_op"]
        table.add_row(
            leg["name"], "-" if leg["wallets"] is None else str(leg["wallets"]),
            f"{leg['ops_per_s']:.0f}", _ms(leg["p50_ms"]), _ms(leg["p99_ms"]),
            str(leg["errors"]), _us(cpu.get(leg["server"])), _us(cpu.get("redis")),
        )  # fmt: skip
    console.print(table)
    console.print(
        "server µs/op: CPU per op of what serves the leg (the bare server; Gate's processes; "
        "this harness, which runs Gate's code in the lua leg; postgres); redis µs/op: Gate's "
        "redis-server"
    )
    if compare["ratios"]:
        ratios = Table(title="Ratios of ops/s")
        ratios.add_column("ratio")
        ratios.add_column("value", justify="right")
        for name, value in compare["ratios"].items():
            ratios.add_row(name, "-" if value is None else f"{value:.2f}x")
        console.print(ratios)
    for note in compare.get("notes", []):
        console.print(f"[yellow]{note}[/yellow]")

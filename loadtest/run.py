"""One harness run: start Gate, set up tenants, drive the fleet, reconcile, and report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import secrets
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from rich.console import Console
from rich.live import Live
from rich.text import Text

from loadtest import report, tenants
from loadtest.api import Api
from loadtest.books import LostEnds, WsBooks, reconcile
from loadtest.driver import Fleet
from loadtest.options import Options
from loadtest.pricing import MIXED_CARD, Card
from loadtest.procs import GateServer, ProcessError
from loadtest.receiver import Cut, Grant, Receiver
from loadtest.stats import Recorder, bucket_summary_ms, buckets, scrape, summary_ms
from loadtest.wire import Client


def rates_path(opts: Options) -> str | None:
    """The card file Gate and the books both read (None: the card Gate ships)."""
    if opts.rates == "default":
        return None
    if opts.rates == "mixed":
        path = opts.out / "rates-mixed.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(MIXED_CARD)
        return str(path.resolve())
    return os.path.abspath(opts.rates)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "host": platform.node(),
        # Other work on the machine skews every figure: the 1-minute load before the run.
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


@contextlib.asynccontextmanager
async def progress(
    console: Console, quiet: bool, fleet: Fleet, rec: Recorder, receiver: Receiver
) -> AsyncIterator[None]:
    """A live line (rate, errors, p99 so far) twice a second; also samples live calls."""

    def line() -> Text:
        elapsed = time.monotonic() - rec.t0
        recent = rec.seconds[-6:-1]  # the last whole seconds
        rate = sum(s.starts for s in recent) / len(recent) if recent else 0.0
        p99s = rec.p99_ms("call_start")
        p99e = rec.p99_ms("call_end")
        return Text(
            f"{elapsed:6.1f}s{' draining' if fleet.stopping else ''}  started {fleet.started} "
            f"({rate:.0f}/s)  live {len(fleet.live)}  "
            f"refused {fleet.refused}  errors {rec.error_count}  cuts {len(receiver.cuts)}  "
            f"p99 start {'-' if p99s is None else f'{p99s:.1f}'} ms  "
            f"end {'-' if p99e is None else f'{p99e:.1f}'} ms  webhooks {receiver.received}"
        )

    async def sample(live: Live | None) -> None:
        while True:
            rec.second().live = len(fleet.live)
            if live is not None:
                live.update(line())
            await asyncio.sleep(0.5)

    if quiet:
        task = asyncio.create_task(sample(None))
        try:
            yield
        finally:
            task.cancel()
        return
    with Live(line(), console=console, refresh_per_second=4, transient=False) as live:
        task = asyncio.create_task(sample(live))
        try:
            yield
        finally:
            task.cancel()
            live.update(line())
    if not console.is_terminal:
        console.print()  # the last progress line is printed without its end of line


def write_calls(path: Path, workspaces: list[WsBooks], receiver: Receiver) -> None:
    """One line per call the books hold, with what the webhooks said about it: for digging."""
    with path.open("wb") as out:
        for wb in workspaces:
            for e in wb.calls.values():
                key = (wb.id, e.call_id)
                cut = receiver.cuts.get(key)
                line = {
                    "workspace_id": wb.id,
                    "call_id": e.call_id,
                    "direction": e.direction,
                    "service": e.price.service,
                    "rate": [e.price.per_min, e.price.fee, e.price.increment],
                    "duration_s": e.duration,
                    "cost_micros": e.cost,
                    "gate_cost_micros": e.gate_cost,
                    "how": e.how,
                    "start_ms": e.t_send_ms,
                    "end_sent_ms": round(e.end_sent_ms),
                    "start_limit_s": e.start_limit,
                    "start_granted_s": e.start_grant,
                    "no_heartbeat": e.no_heartbeat,
                    "gate_leak_s": e.gate_leak_s,
                    "lost_end": e.lost,
                    "true_duration_s": e.true_duration if e.lost else None,
                    "ended_by": e.ended_by or None,
                    "cut": None if cut is None else [cut.reason, cut.cut_at_ms, cut.received_ms],
                    "limits": [
                        [x.seq, x.at_ms, x.max_duration_s] for x in receiver.limits.get(key, ())
                    ],
                }
                out.write(orjson.dumps(line) + b"\n")


async def settle_webhooks(receiver: Receiver, quiet_s: float = 1.0, limit_s: float = 15.0) -> None:
    """Wait until no webhook arrived for `quiet_s` (late cuts, transaction events)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            while True:
                receiver.activity.clear()
                try:
                    async with asyncio.timeout(quiet_s):
                        await receiver.activity.wait()
                except TimeoutError:
                    return


ARCHIVE_HARD = {
    "GATE_ARCHIVE_INTERVAL_S": "1",
    "GATE_LEDGER_KEEP_ROWS": "100",
    "GATE_LEDGER_KEEP_S": "3600",
}


async def redis_memory(redis_url: str) -> dict[str, Any]:
    """Redis bytes per workspace (MEMORY USAGE of its keys) and ledger rows left in Redis."""
    from gate.store import keys
    from gate.store.redis_client import connect, text

    client = await connect(redis_url)
    try:
        per_ws: list[int] = []
        ledger_rows = 0
        for member in await client.smembers(keys.WORKSPACES):
            workspace_id = text(member)
            total = 0
            async for name in client.scan_iter(match=f"gate:{{{workspace_id}}}*", count=1000):
                total += int(await client.memory_usage(name, samples=0) or 0)
            per_ws.append(total)
            ledger_rows += int(await client.xlen(keys.for_workspace(workspace_id).ledger))
        info = await client.info("memory")
    finally:
        await client.aclose()
    return {
        "workspaces": len(per_ws),
        "bytes_per_workspace_avg": round(sum(per_ws) / max(len(per_ws), 1)),
        "bytes_per_workspace_max": max(per_ws, default=0),
        "ledger_rows_in_redis": ledger_rows,
        "used_memory_bytes": int(info["used_memory"]),
    }


async def scenario(
    opts: Options, client: Client, platform_key: str, card: Card, run_id: str, console: Console
) -> dict[str, Any]:
    """The switch-fleet load: returns the figures and the reconciliation for result.json."""
    setup = Api(client, Recorder())
    fleet_ref: list[Fleet] = []

    def on_cut(workspace_id: str, call_id: str, cut: Cut) -> None:
        if fleet_ref:
            fleet_ref[0].on_cut(workspace_id, call_id, cut)

    def on_grant(workspace_id: str, call_id: str, grant: Grant) -> None:
        if fleet_ref:
            fleet_ref[0].on_grant(workspace_id, call_id, grant)

    receiver = Receiver(on_cut, on_grant)
    await receiver.start()
    try:
        workspaces = await tenants.create_all(
            setup, platform_key, receiver, opts.workspaces, opts.balances, run_id,
            opts.max_concurrent, opts.auto_recharge_share, opts.plan,
        )  # fmt: skip
        before = await scrape(client)
        rec = Recorder()
        fleet = Fleet(opts, Api(client, rec), workspaces, card, run_id)
        fleet_ref.append(fleet)
        async with progress(console, opts.quiet, fleet, rec, receiver):
            await fleet.run(platform_key)
        await settle_webhooks(receiver)
        if opts.auto_recharge_share:
            await tenants.settle_auto_recharges(setup, workspaces)
        after = await scrape(client)
        checks = []
        for wb in workspaces:
            wallet = await tenants.wallet(setup, wb.admin_key, wb.id)
            rows = await tenants.ledger_rows(setup, wb.admin_key, wb.id)
            held = await tenants.buckets(setup, wb.admin_key, wb.id) if opts.plan else None
            checks.append(reconcile(wb, wallet, rows, receiver, held))
    finally:
        await receiver.stop()
    write_calls(opts.out / "calls.jsonl", workspaces, receiver)

    lost = LostEnds()
    for wb in workspaces:
        for e in wb.calls.values():
            if e.lost:
                lost.add(e, opts.tick_s, opts.sync_s)
    problems = [f"{c.workspace_id}: {p}" for c in checks for p in c.problems]
    problems += lost.problems
    if fleet.early_cuts:
        problems.append(f"healthy no-heartbeat calls cut early: {len(fleet.early_cuts)}")
    for name, count in fleet.checks.items():
        if count:
            problems.append(f"{name}: {count}")
    hooks = receiver.report()
    if hooks["early_cuts"]:
        problems.append(f"cuts received before their cut_at: {hooks['early_cuts']}")
    if hooks["signature_failures"]:
        problems.append(f"webhook signatures that did not verify: {hooks['signature_failures']}")
    overspend = sum(c.overspend_micros for c in checks)
    if overspend:
        problems.append(f"overspend: {overspend} micros beyond grace, leakage and unseen calls")
    mismatched = sum(c.mismatched_micros for c in checks)
    window = max(fleet.window_s, 1e-9)
    return {
        "calls_attempted": fleet.attempted,
        "calls_started": fleet.started,
        "calls_refused": fleet.refused,
        "starts_per_s": round(fleet.started / window, 2),
        "arrival_window_s": round(fleet.window_s, 3),
        "hangups": dict(sorted(fleet.hangups.items())),
        "unknown_ends": fleet.unknown_ends,
        "credits": fleet.credits,
        "auto_recharges": sum(c.auto_recharges for c in checks),
        "sms_charges": fleet.sms,
        "plan": opts.plan,
        "auto_recharged_micros": sum(c.auto_recharged_micros for c in checks),
        "checks": fleet.checks,
        "requests": dict(sorted(rec.counts.items())),
        "refusals": dict(sorted(rec.refusals.items())),
        "errors": dict(sorted(rec.errors.items())),
        "error_count": rec.error_count,
        "latency_ms": rec.latency_ms(),
        "cut_delay_ms": summary_ms(receiver.cut_delay),
        "cuts_received": len(receiver.cuts),
        "ticker_lag_ms": bucket_summary_ms(
            buckets(before, "gate_ticker_lag_seconds"), buckets(after, "gate_ticker_lag_seconds")
        ),
        "gate_webhook_delay_ms": bucket_summary_ms(
            buckets(before, "gate_webhook_delivery_delay_seconds"),
            buckets(after, "gate_webhook_delivery_delay_seconds"),
        ),
        "client_arrival_lag_ms": summary_ms(fleet.arrival_lag),
        "webhooks": hooks,
        "lost_ends": lost.to_json(),
        "no_heartbeat": {
            "calls": fleet.follow_calls,
            "hung_up_at_hangup_at": fleet.hangups.get("hangup_at", 0),
            "early_cuts": len(fleet.early_cuts),
            "early": fleet.early_cuts[:20],
            "call_extended_events": receiver.by_type.get("call.extended", 0),
        },
        "syncs": {"sent": fleet.syncs, "lost_ends_ended": fleet.sync_ended},
        "overspend_micros": overspend,
        "leakage_micros": sum(c.leakage_micros for c in checks),
        "leakage_s": sum(c.leakage_s for c in checks),
        "leakage_s_gate_only": sum(c.gate_only_leak_s for c in checks),
        "mismatched_micros": mismatched,
        "reconciliation": {
            "ok": not problems,
            "mismatched_micros": mismatched,
            "problem_count": len(problems),
            "problems": problems[:50],
            "workspaces": [c.to_json() for c in checks],
        },
        "timeline": rec.timeline(),
    }


async def run(opts: Options, console: Console) -> dict[str, Any]:
    """Everything --duration and --compare ask for, around one Gate; returns result.json."""
    run_id = secrets.token_hex(3)
    path = rates_path(opts)
    card = Card.load(path)
    opts.out.mkdir(parents=True, exist_ok=True)
    gate: GateServer | None = None
    if opts.url is None:
        console.print("starting gate serve with a private redis-server...")
        gate = await GateServer.start(
            tick_s=opts.tick_s, buffer_s=opts.buffer_s, grace_s=opts.grace_s,
            workers=opts.workers, rates=path, log=opts.out / "gate.log",
            extra_env={"GATE_STALE_AFTER_S": str(opts.stale_after_s)}
            | (ARCHIVE_HARD if opts.archive else {}),
        )  # fmt: skip
        url, platform_key, redis_url = gate.url, gate.platform_key, gate.redis_url
    else:
        url, platform_key, redis_url = opts.url, opts.platform_key or "", opts.redis_url
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(opts).items()
            if k not in ("platform_key",)
        }
        | {"balances": [str(b) for b in opts.balances], "rate_card": card.source},
        "gate": {"url": url, "started_by_harness": gate is not None, "workers": opts.workers,
                 "tick_s": opts.tick_s, "buffer_s": opts.buffer_s, "grace_s": opts.grace_s},
        "out": str(opts.out / "result.json"),
    }  # fmt: skip
    client = Client(host, port, limit=opts.connections, timeout_s=opts.timeout_s)
    try:
        if opts.duration > 0:
            result |= await scenario(opts, client, platform_key, card, run_id, console)
        if opts.compare:
            from loadtest import compare

            cmp = await compare.run(
                opts, host, port, platform_key, redis_url, path, card, run_id, console,
                gate.pid if gate is not None else None,
            )  # fmt: skip
            result["compare"] = cmp
            if "reconciliation" not in result:  # compare only: its own checks are the verdict
                result["mismatched_micros"] = cmp["mismatched_micros"]
                result["reconciliation"] = {
                    "ok": cmp["ok"],
                    "mismatched_micros": cmp["mismatched_micros"],
                    "problem_count": len(cmp["problems"]),
                    "problems": cmp["problems"][:50],
                    "workspaces": [],
                }
        if redis_url:
            result["redis_memory"] = await redis_memory(redis_url)
            console.print(f"Redis memory: {result['redis_memory']}")
    finally:
        await client.close()
        if gate is not None:
            gate.stop()
    result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(opts: Options) -> int:
    import uvloop

    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=120)  # logs and CI: wide enough for the tables
    if opts.chaos:
        from loadtest import chaos

        return chaos.main(opts, console)
    try:
        result = uvloop.run(run(opts, console))
    except (ProcessError, tenants.SetupError, OSError) as err:
        console.print(f"[red]loadtest: the run could not be made: {err}[/red]")
        return 2
    report.write_json(opts.out / "result.json", result)
    if "timeline" in result:
        title = (
            f"Gate load test {result['date']}: {opts.rate:g} calls/s offered, "
            f"{result['starts_per_s']:.1f} started/s, {opts.workspaces} workspaces, "
            f"mode {opts.mode}"
        )
        window = result["arrival_window_s"]
        report.plot(opts.out / "loadtest.png", result["timeline"], title, window)
        report.summary(console, result)
    if "compare" in result:
        title = (
            f"Reserve workload, {opts.concurrency} in flight, {opts.compare_s:g} s per leg, "
            f"{result['date']}"
        )
        report.plot_compare(opts.out / "compare.png", result["compare"], title)
        report.compare_table(console, result["compare"])
    ok = result.get("reconciliation", {}).get("ok", True) and result.get("compare", {}).get(
        "ok", True
    )
    return 0 if ok else 1

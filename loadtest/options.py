"""Command-line options of `python -m loadtest` (also `gate loadtest`), every one documented."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

EPILOG = """\
What a run does: starts Gate (`gate serve` with its own private redis-server) unless --url
is given, creates the workspaces with their balances and a switch key each, points their
webhooks at the harness's receiver, then for --duration seconds acts like a switch fleet:
Poisson call arrivals, exponential call lengths, outbound/inbound, voice/AI agent, far ends
in the US (65%), toll-free (10%), UK (15%) and India (10%); heartbeats,
top-ups and adjustments mid-call, repeated ends, retried starts, ends of calls Gate never
saw. Every call.cut webhook is verified and obeyed like a switch would; with
--no-heartbeat-share some switches send no heartbeats and hang up at hangup_at unless
call.extended / call.limit move it; with --lost-end-share some ends are never sent, and
--sync-s lists the calls each switch still has up so Gate ends the lost ones. When the calls have
ended it reconciles every workspace to the micro with its own books and writes
OUT/result.json, OUT/loadtest.png, OUT/calls.jsonl (every call, for digging) and OUT/gate.log.
Exit status: 0 reconciled, 1 any mismatch, 2 the run could not be made.

--compare instead runs the same reserve workload (start a call, end it) at --concurrency
for --compare-s seconds per leg: a bare aiohttp+uvloop JSON handler; Gate over HTTP; Gate's
Lua scripts straight on Redis; a PostgreSQL row-lock peer (SELECT ... FOR UPDATE, UPDATE,
INSERT a ledger row). Each Gate and PostgreSQL leg runs on one hot wallet and on
--compare-wallets wallets; the table and its ratios go to result.json under "compare".

Examples:
  python -m loadtest --duration 60                  # the documented 60-second load
  python -m loadtest --compare                      # the comparison table
  python -m loadtest --workspaces 1 --balance 1000  # one hot wallet
  python -m loadtest --duration 30 --lost-end-share 0.1 --no-heartbeat-share 0.5 --sync-s 5
  python -m loadtest --chaos                        # faults under load, books after each
"""


AUTO_RECHARGE_THRESHOLD_USD = 20  # what --auto-recharge-share workspaces are given
AUTO_RECHARGE_TOPUP_USD = 10


@dataclass(frozen=True)
class Options:
    url: str | None
    platform_key: str | None
    redis_url: str | None
    workers: int
    tick_s: int
    buffer_s: int
    grace_s: int
    rates: str
    workspaces: int
    balances: tuple[Decimal, ...]
    max_concurrent: int | None
    rate: float
    duration: float
    max_calls: int
    mean_call_s: float
    max_call_s: int
    inbound_share: float
    ai_share: float
    mode: str
    heartbeat_s: float
    topup_rate: float
    repeat_end_share: float
    retry_start_share: float
    unknown_end_share: float
    wallet_poll_s: float
    lost_end_share: float
    no_heartbeat_share: float
    sync_s: float
    stale_after_s: int
    connections: int
    timeout_s: float
    drain_s: float
    seed: int
    out: Path
    quiet: bool
    compare: bool
    compare_s: float
    concurrency: int
    compare_wallets: int
    legs: tuple[str, ...]
    pg_url: str
    pg_sync: str
    archive: bool = False
    auto_recharge_share: float = 0.0
    sms_rate: float = 0.0
    plan: str | None = None
    chaos: bool = False
    chaos_phase_s: float = 20.0
    chaos_outage_s: float = 10.0
    chaos_faults: str = ""


LEGS = ("bare", "http", "lua", "pg")


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share from 0 to 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return value


def _balances(text: str) -> tuple[Decimal, ...]:
    try:
        values = tuple(Decimal(p.strip()) for p in text.split(","))
    except InvalidOperation as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not USD amounts like 5,20.50") from err
    if any(not v.is_finite() or v < 0 or v != v.quantize(Decimal("0.000001")) for v in values):
        raise argparse.ArgumentTypeError("balances are USD >= 0 with at most 6 decimal places")
    return values


def _legs(text: str) -> tuple[str, ...]:
    legs = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [leg for leg in legs if leg not in LEGS]
    if unknown or not legs:
        raise argparse.ArgumentTypeError(f"legs are a comma list of {', '.join(LEGS)}")
    return legs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Load-test Gate like a busy switch fleet and reconcile every wallet to "
        "the micro.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("the Gate under test")
    g.add_argument(
        "--url",
        help="a running Gate on this machine (http://127.0.0.1:PORT); "
        "default: start `gate serve` with a private redis-server and stop it after",
    )
    g.add_argument(
        "--platform-key",
        default=os.environ.get("GATE_PLATFORM_KEY"),
        help="the platform key of the Gate at --url (default $GATE_PLATFORM_KEY)",
    )
    g.add_argument(
        "--redis-url",
        help="the Redis of the Gate at --url, for the --compare "
        "Lua leg (a private Gate's own Redis is found by itself)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        help="GATE_WORKERS: Gate processes sharing the port (default 1)",
    )
    g.add_argument(
        "--tick-s",
        type=int,
        default=1,
        help="GATE_TICK_S: seconds between ticks of a live call (default 1: "
        "time compressed tenfold)",
    )
    g.add_argument(
        "--buffer-s",
        type=int,
        default=6,
        help="GATE_BUFFER_S: seconds of talk held ahead (default 6)",
    )
    g.add_argument(
        "--grace-s",
        type=int,
        default=3,
        help="GATE_INBOUND_GRACE_S: inbound time past the money (default 3)",
    )
    g.add_argument(
        "--rates",
        default="default",
        help="rate card: 'default' (the card Gate ships), 'mixed' (connect fees and "
        "1/1, 6/6, 30/6, 60/60 increments) or a TOML path; the books read the "
        "same file",
    )
    g.add_argument(
        "--archive",
        action="store_true",
        help="archive hard: a pass a second and a recent window of 100 rows, so ledger rows "
        "move to SQL during the run and the reconciliation reads across the seam; the end "
        "reports Redis memory per workspace",
    )
    w = p.add_argument_group("workspaces")
    w.add_argument("--workspaces", type=int, default=20, help="how many (default 20)")
    w.add_argument(
        "--balance",
        dest="balances",
        type=_balances,
        default=_balances("5,100,1000"),
        help="opening balance in USD, or a comma list cycled over the workspaces "
        "(default 5,100,1000)",
    )
    w.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="set max_concurrent_calls on every workspace (default: no cap)",
    )
    t = p.add_argument_group("traffic")
    t.add_argument(
        "--rate",
        type=_positive,
        default=100.0,
        help="mean call arrivals per second, Poisson (default 100)",
    )
    t.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of arrivals (default 60; 0 with --compare)",
    )
    t.add_argument(
        "--max-calls",
        type=int,
        default=1_000_000,
        help="stop arrivals after this many calls (default 1000000)",
    )
    t.add_argument(
        "--mean-call-s",
        type=_positive,
        default=9.0,
        help="mean call length, exponential (default 9: 90 s at the tenfold compression "
        "of the default tick and buffer)",
    )
    t.add_argument("--max-call-s", type=int, default=45, help="longest planned call (default 45)")
    t.add_argument(
        "--inbound-share", type=_share, default=0.3, help="share of inbound calls (default 0.3)"
    )
    t.add_argument(
        "--ai-share", type=_share, default=0.2, help="share of AI-agent calls (default 0.2)"
    )
    t.add_argument(
        "--mode",
        choices=("gate", "heartbeat", "mixed"),
        default="mixed",
        help="gate: Gate's ticks only; heartbeat: every call also sends "
        "heartbeats; mixed: half the calls do (default mixed)",
    )
    t.add_argument(
        "--heartbeat-s",
        type=_positive,
        default=2.0,
        help="seconds between a call's heartbeats (default 2)",
    )
    t.add_argument(
        "--topup-rate",
        type=float,
        default=1.0,
        help="top-ups and adjustments per second over all workspaces (default 1)",
    )
    t.add_argument(
        "--repeat-end-share",
        type=_share,
        default=0.05,
        help="share of ends (and top-ups, heartbeats) sent twice (default 0.05)",
    )
    t.add_argument(
        "--retry-start-share",
        type=_share,
        default=0.05,
        help="share of starts retried with the same call_id (default 0.05)",
    )
    t.add_argument(
        "--unknown-end-share",
        type=_share,
        default=0.01,
        help="ends of calls Gate never saw, per arrival (default 0.01)",
    )
    t.add_argument(
        "--wallet-poll-s",
        type=float,
        default=2.0,
        help="each workspace polls GET /v1/wallet this often; 0: never (default 2)",
    )
    t.add_argument(
        "--lost-end-share",
        type=_share,
        default=0.0,
        help="share of calls whose end is lost: the switch hangs up but never sends it, so "
        "Gate ends them itself (by --sync-s, or by heartbeat silence), billed to the last "
        "evidence; the books learn what was billed and check it (default 0)",
    )
    t.add_argument(
        "--no-heartbeat-share",
        type=_share,
        default=0.0,
        help="share of calls whose switch sends no heartbeats and hangs up at hangup_at unless "
        "call.extended / call.limit / call.cut move it: any healthy call cut so is counted "
        "(default 0)",
    )
    t.add_argument(
        "--sync-s",
        type=float,
        default=0.0,
        help="every this many seconds each workspace's switch POSTs /v1/calls/sync listing "
        "the calls it still has up; 0: never (default 0)",
    )
    t.add_argument(
        "--stale-after-s",
        type=int,
        default=9,
        help="GATE_STALE_AFTER_S of the Gate the harness starts: silence of a reporting "
        "switch after which Gate ends a call (default 9: 90 s at the tenfold compression)",
    )
    t.add_argument(
        "--connections",
        type=int,
        default=256,
        help="most HTTP connections of the load client (default 256)",
    )
    t.add_argument(
        "--timeout-s", type=_positive, default=10.0, help="HTTP timeout per request (default 10)"
    )
    t.add_argument(
        "--drain-s",
        type=float,
        default=None,
        help="after arrivals stop, how long calls may go on before the harness "
        "hangs them all up (default max-call-s + 15)",
    )
    t.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    t.add_argument(
        "--auto-recharge-share",
        type=_share,
        default=0.0,
        help="share of workspaces with auto-recharge on (sandbox card, threshold "
        f"${AUTO_RECHARGE_THRESHOLD_USD}, top-up ${AUTO_RECHARGE_TOPUP_USD}; default 0)",
    )
    t.add_argument(
        "--sms-rate",
        type=float,
        default=0.0,
        help="SMS charges per second over all workspaces (POST /v1/charges with a text the "
        "books count segments of; default 0: none)",
    )
    t.add_argument(
        "--plan",
        default=None,
        help="assign this plan of the rate card to every workspace (PUT /v1/workspaces/{id}/"
        "plan); the books then reconcile every bucket (default: no plan)",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--out",
        type=Path,
        default=Path("loadtest-out"),
        help="directory for result.json and loadtest.png (default ./loadtest-out)",
    )
    o.add_argument(
        "--quiet",
        action="store_true",
        help="no live progress line (the final summary is still printed)",
    )
    x = p.add_argument_group("chaos (--chaos)")
    x.add_argument(
        "--chaos",
        action="store_true",
        help="inject faults one after another during the load, each in its own phase of "
        "--chaos-phase-s seconds of arrivals, and reconcile every workspace to the micro after "
        "each: kill -9 a Gate worker; kill -9 redis-server and restart it on its AOF "
        "(appendfsync everysec, then always); SIGSTOP redis for --chaos-outage-s; take the "
        "webhook receiver down as long; a second Gate 2 s ahead, then 2 s behind, sharing the "
        "traffic. Starts its own redis-server and Gate (GATE_WORKERS >= 2); prints a table of "
        "what each fault showed and writes it to result.json under 'chaos'",
    )
    x.add_argument(
        "--chaos-faults",
        default="",
        help="only these faults, a comma list of their numbers in the table (default: all 7)",
    )
    x.add_argument(
        "--chaos-phase-s",
        type=_positive,
        default=20.0,
        help="seconds of arrivals per fault (default 20)",
    )
    x.add_argument(
        "--chaos-outage-s",
        type=_positive,
        default=10.0,
        help="how long Redis stays down or paused and the receiver stays away (default 10)",
    )
    c = p.add_argument_group("comparison (--compare)")
    c.add_argument(
        "--compare",
        action="store_true",
        help="run the comparison legs (after the load, if --duration is given)",
    )
    c.add_argument(
        "--compare-s",
        type=_positive,
        default=10.0,
        help="seconds measured per leg, after a 1 s warm-up (default 10)",
    )
    c.add_argument(
        "--concurrency", type=int, default=50, help="requests in flight per leg (default 50)"
    )
    c.add_argument(
        "--compare-wallets", type=int, default=100, help="wallets of the spread legs (default 100)"
    )
    c.add_argument(
        "--legs",
        type=_legs,
        default=LEGS,
        help="legs to run, a comma list of bare,http,lua,pg (default all)",
    )
    c.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL for the row-lock peer (default "
        "postgresql://postgres@127.0.0.1:5432/test); tables gate_lt_* are made "
        "and dropped",
    )
    c.add_argument(
        "--pg-sync",
        choices=("on", "off"),
        default="on",
        help="synchronous_commit of the PostgreSQL peer (default on; Gate's Redis "
        "runs appendfsync everysec, so 'off' is the like-for-like durability)",
    )
    return p


def parse(argv: list[str] | None) -> Options:
    parser = build_parser()
    a = parser.parse_args(argv)
    duration = a.duration if a.duration is not None else (0.0 if a.compare else 60.0)
    if a.chaos and (a.url is not None or a.compare):
        parser.error("--chaos starts its own Gate and Redis: not with --url or --compare")
    if a.url is not None:
        host = a.url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            parser.error("--url must point at this machine (127.0.0.1)")
        if not a.platform_key:
            parser.error("--url needs --platform-key (or $GATE_PLATFORM_KEY)")
    if a.workspaces < 1 or a.connections < 1 or a.concurrency < 1 or a.compare_wallets < 1:
        parser.error("--workspaces, --connections, --concurrency, --compare-wallets must be >= 1")
    if duration < 0 or a.max_call_s < 1:
        parser.error("--duration must be >= 0 and --max-call-s >= 1")
    if duration == 0 and not a.compare:
        parser.error("nothing to do: --duration 0 without --compare")
    if a.sync_s < 0 or a.stale_after_s < 1:
        parser.error("--sync-s must be >= 0 and --stale-after-s >= 1")
    if a.sync_s > 0 and a.stale_after_s <= a.sync_s + 1:
        parser.error("--stale-after-s must exceed --sync-s + 1: a call listed by every sync "
                     "must never look silent to Gate")  # fmt: skip
    if a.heartbeat_s + 1 >= a.stale_after_s and a.mode != "gate":
        parser.error("--stale-after-s must exceed --heartbeat-s + 1")
    silent = a.mode != "heartbeat" or a.no_heartbeat_share > 0
    if a.lost_end_share > 0 and a.sync_s == 0 and silent:
        parser.error(
            "--lost-end-share with calls that send no heartbeats needs --sync-s: Gate has no "
            "evidence when such a call went down, so its lost end is billed to its cut or "
            "max_call_s (the README's trade-off); use --mode heartbeat, or sync"
        )
    return Options(
        url=a.url.rstrip("/") if a.url else None,
        platform_key=a.platform_key,
        redis_url=a.redis_url,
        workers=a.workers,
        tick_s=a.tick_s,
        buffer_s=a.buffer_s,
        grace_s=a.grace_s,
        rates=a.rates,
        workspaces=a.workspaces,
        balances=a.balances,
        max_concurrent=a.max_concurrent,
        rate=a.rate,
        duration=duration,
        max_calls=a.max_calls,
        mean_call_s=a.mean_call_s,
        max_call_s=a.max_call_s,
        inbound_share=a.inbound_share,
        ai_share=a.ai_share,
        mode=a.mode,
        heartbeat_s=a.heartbeat_s,
        topup_rate=a.topup_rate,
        repeat_end_share=a.repeat_end_share,
        retry_start_share=a.retry_start_share,
        unknown_end_share=a.unknown_end_share,
        wallet_poll_s=a.wallet_poll_s,
        lost_end_share=a.lost_end_share,
        no_heartbeat_share=a.no_heartbeat_share,
        sync_s=a.sync_s,
        stale_after_s=a.stale_after_s,
        connections=a.connections,
        timeout_s=a.timeout_s,
        drain_s=a.drain_s if a.drain_s is not None else a.max_call_s + 15.0,
        seed=a.seed,
        out=a.out,
        quiet=a.quiet,
        compare=a.compare,
        compare_s=a.compare_s,
        concurrency=a.concurrency,
        compare_wallets=a.compare_wallets,
        legs=a.legs,
        pg_url=a.pg_url,
        pg_sync=a.pg_sync,
        archive=a.archive,
        auto_recharge_share=a.auto_recharge_share,
        sms_rate=a.sms_rate,
        plan=a.plan,
        chaos=a.chaos,
        chaos_phase_s=a.chaos_phase_s,
        chaos_outage_s=a.chaos_outage_s,
        chaos_faults=a.chaos_faults,
    )

"""`python -m loadtest.wrkpair`: call starts/s and p99 of Gate beside the bare handler, as a ratio.

The measurement of issue 22: `wrk -t1 -c50` posting `POST /v1/calls` (`answered: false`, a
fresh `call_id` per request from a wrk Lua script, switch keys of a few workspaces in turn)
against one `gate serve` with its private redis-server, and the same request against the bare
aiohttp + uvloop + orjson handler (loadtest/bare.py). The targets take turns, A/B/A/B,
`--rounds` times, so whatever else the two cores run hits them alike; what compares across
runs is each build's starts/s over the bare handler's in the same round.

A run is not fooled by errors: more than 0.1 % non-2xx (or any socket error) makes a
measurement invalid, and after each Gate measurement the workspaces' live calls must have
grown by one ringing call per 2xx wrk counted (at most `connections` more: starts still in
flight when wrk stopped), a sample of the call ids wrk sent must read back as calls holding
money, and the wallets' reserved total must have grown by exactly the sample's hold per new
call (every call wrk starts is alike).

`--against NAME=DIR` adds another Gate source tree (run with this checkout's venv and
PYTHONPATH=DIR), e.g. `git worktree add /tmp/old ab56434`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from loadtest import tenants
from loadtest.api import Api
from loadtest.cost import BALANCE_USD, FROM, TO
from loadtest.procs import BareServer, GateServer, cpu_seconds
from loadtest.stats import Recorder
from loadtest.wire import Client

WRK = "wrk"
MAX_NON_2XX = 0.001  # above this share of non-2xx answers a measurement is invalid
SAMPLE = 20  # call ids read back after each Gate measurement

# wrk's Lua: a fresh call id per request, the workspaces' switch keys in turn; done() prints
# one JSON line the harness reads (wrk's own text report rounds p99 to 10 µs and hides counts).
_LUA = r"""
local keys = {%(keys)s}
local prefix = "%(prefix)s"
n = 0  -- global: done() reads it from the thread
local threads = {}
function setup(thread) table.insert(threads, thread) end
function request()
  n = n + 1
  local body = '{"call_id":"' .. prefix .. n .. '","direction":"outbound",' ..
    '"from":"%(from_)s","to":"%(to)s","answered":false}'
  return wrk.format("POST", "/v1/calls", {
    ["Authorization"] = "Bearer " .. keys[(n %% #keys) + 1],
    ["Content-Type"] = "application/json"}, body)
end
function done(s, latency, requests)
  local sent = 0
  for _, t in ipairs(threads) do sent = sent + t:get("n") end
  io.write(string.format('WRKJSON {"requests":%%d,"duration_us":%%d,"non2xx":%%d,' ..
    '"socket_errors":%%d,"timeouts":%%d,"sent":%%d,"p50_us":%%d,"p99_us":%%d,"max_us":%%d}\n',
    s.requests, s.duration, s.errors.status, s.errors.connect + s.errors.read +
    s.errors.write, s.errors.timeout, sent, latency:percentile(50),
    latency:percentile(99), latency.max))
end
"""


class BenchError(RuntimeError):
    """wrk is missing or failed, or a measurement could not be checked; says what to do."""


def wrk_path() -> str:
    path = shutil.which(WRK)
    if path is None:
        raise BenchError(
            "wrk is not installed: run `make bench` (it installs it with apt-get), or "
            "`apt-get install --no-install-recommends wrk`"
        )
    return path


@dataclass
class Measured:
    """One wrk run against one target."""

    target: str
    round: int
    starts_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    sent: int
    server_us: float = 0.0  # CPU µs per answer of the server's process (Redis apart)
    redis_us: float = 0.0  # CPU µs per answer of its redis-server
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


async def run_wrk(
    url: str, keys: list[str], prefix: str, seconds: int, connections: int, workdir: Path
) -> dict[str, Any]:
    """One `wrk -t1` run; its done() line as a dict."""
    script = workdir / f"{prefix}.lua"
    script.write_text(
        _LUA
        % {"keys": ", ".join(f'"{k}"' for k in keys), "prefix": prefix, "from_": FROM, "to": TO}
    )
    proc = await asyncio.create_subprocess_exec(
        wrk_path(), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
        "-s", str(script), url,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("WRKJSON "):
            return dict(orjson.loads(line[8:]))
    raise BenchError(
        f"wrk exited {proc.returncode} without its summary: {err.decode(errors='replace')[-500:]}"
    )


def measured(
    name: str, rnd: int, w: dict[str, Any], cpu0: dict[str, float], cpu1: dict[str, float]
) -> Measured:
    seconds = w["duration_us"] / 1e6
    n = max(w["requests"], 1)
    m = Measured(
        name, rnd, round(w["requests"] / max(seconds, 1e-9), 1), w["p50_us"] / 1000,
        w["p99_us"] / 1000, w["requests"], w["non2xx"], w["socket_errors"] + w["timeouts"],
        w["sent"], round((cpu1["gate"] - cpu0["gate"]) * 1e6 / n, 1),
        round((cpu1["redis"] - cpu0["redis"]) * 1e6 / n, 1),
    )  # fmt: skip
    if m.requests == 0:
        m.problems.append("no request answered")
    elif m.non2xx > MAX_NON_2XX * m.requests:
        m.problems.append(f"{m.non2xx} of {m.requests} answers non-2xx (> 0.1 %)")
    if m.socket_errors:
        m.problems.append(f"{m.socket_errors} socket errors or timeouts")
    return m


class GateTarget:
    """A Gate build with its workspaces, checked after each measurement."""

    def __init__(self, name: str, gate: GateServer, api: Api, wallets: list[Any]) -> None:
        self.name = name
        self.gate = gate
        self.api = api
        self.wallets = wallets

    @classmethod
    async def start(
        cls, name: str, src: Path | None, wallets: int, log: Path, extra_env: dict[str, str]
    ) -> GateTarget:
        # Ringing calls stay up for the check; a boot on a machine other suites keep busy must
        # not fail its SCRIPT LOADs at the 250 ms per-command default (the tests give 2 s too).
        # Neither touches a start's path: its deadline is GATE_START_TIMEOUT_MS.
        env = dict(extra_env, GATE_RING_TIMEOUT_S="3600", GATE_REDIS_TIMEOUT_MS="2000")
        if src is not None:
            env["PYTHONPATH"] = str(src)
        gate = await GateServer.start(
            tick_s=10, buffer_s=60, grace_s=30, workers=1, rates=None, log=log, extra_env=env
        )
        api = Api(Client("127.0.0.1", gate.port, limit=20, timeout_s=10), Recorder())
        try:
            books = await tenants.create_all(
                api, gate.platform_key, None, wallets, (BALANCE_USD,),
                f"wrk-{name}-{secrets.token_hex(2)}", max_concurrent=100_000,
            )  # fmt: skip
        except BaseException:
            await api.client.close()
            gate.stop()
            raise
        return cls(name, gate, api, books)

    @property
    def keys(self) -> list[str]:
        return [wb.switch_key for wb in self.wallets]

    async def held(self) -> tuple[int, int]:
        """(live calls, reserved micros) summed over the workspaces."""
        states = await asyncio.gather(
            *(tenants.wallet(self.api, wb.admin_key, wb.id) for wb in self.wallets)
        )
        return (
            sum(int(s.get("live_calls", 0)) for s in states),
            sum(int(s.get("reserved_micros", 0)) for s in states),
        )

    async def check(self, m: Measured, prefix: str, before: tuple[int, int]) -> None:
        """Every 2xx wrk counted is a ringing call that holds money; a sample reads back."""
        await asyncio.sleep(0.2)  # the starts wrk stopped waiting for are answered by now
        live, reserved = await self.held()
        ok = m.requests - m.non2xx
        grew = live - before[0]
        if not ok <= grew <= ok + (m.sent - m.requests):
            m.problems.append(
                f"{ok} starts answered 2xx, {m.sent} sent, but live calls grew by {grew}"
            )
        # wrk calls request() once before it connects, so id 1 is never sent; ids up to
        # the answered count were all sent long before wrk stopped.
        step = max(ok // SAMPLE, 1)
        holds: set[int] = set()
        for n in range(2, ok + 1, step):
            wb = self.wallets[n % len(self.wallets)]
            answer = await self.api.call(
                "get", "GET", f"/v1/calls/{prefix}{n}", None, wb.admin_key, retries=2
            )
            held = answer.body.get("reserved_micros")
            if not answer.ok or answer.body.get("state") not in ("pending", "live"):
                m.problems.append(f"call {prefix}{n}: HTTP {answer.status} {answer.body}")
                return
            if held is not None and int(held) <= 0:
                m.problems.append(f"call {prefix}{n} holds no money: {answer.body}")
                return
            holds.add(int(held or 0))
        # Every call wrk starts is alike (same rate, no plan): each holds the same money, so
        # the wallets' reserved total grew by exactly that much per new call.
        added = reserved - before[1]
        if len(holds) == 1 and added != grew * (each := holds.pop()):
            m.problems.append(f"{grew} new calls of {each} micros each, but reserved grew {added}")
        elif grew and added < grew:
            m.problems.append(f"{grew} new calls reserve {added} micros in all")

    async def close(self) -> None:
        await self.api.client.close()
        self.gate.stop()


async def measure_gate(
    t: GateTarget, rnd: int, seconds: int, connections: int, workdir: Path
) -> Measured:
    prefix = f"w{secrets.token_hex(3)}-"
    before = await t.held()
    cpu0 = cpu_seconds(t.gate.pid)
    w = await run_wrk(t.gate.url, t.keys, prefix, seconds, connections, workdir)
    m = measured(t.name, rnd, w, cpu0, cpu_seconds(t.gate.pid))
    await t.check(m, prefix, before)
    return m


async def measure_bare(
    bare: BareServer, rnd: int, seconds: int, connections: int, workdir: Path
) -> Measured:
    url = f"http://127.0.0.1:{bare.port}"
    cpu0 = cpu_seconds(bare.child.proc.pid)
    w = await run_wrk(url, ["gk_ws_bare"], f"b{rnd}-", seconds, connections, workdir)
    return measured("bare", rnd, w, cpu0, cpu_seconds(bare.child.proc.pid))


@dataclass
class Pair:
    """What one run measured: every wrk run, in the order they ran."""

    runs: list[Measured]
    loadavg: tuple[float, float, float]

    def of(self, name: str) -> list[Measured]:
        return [m for m in self.runs if m.target == name]

    def ratios(self, name: str) -> list[float]:
        """Each round's starts/s of `name` over the bare handler's in that round."""
        bare = {m.round: m.starts_per_s for m in self.of("bare") if m.valid}
        return [
            round(m.starts_per_s / bare[m.round], 3)
            for m in self.of(name)
            if m.valid and bare.get(m.round)
        ]

    @property
    def invalid(self) -> list[Measured]:
        return [m for m in self.runs if not m.valid]


async def measure_pair(
    targets: list[GateTarget], bare: BareServer, rounds: int, seconds: int,
    connections: int, workdir: Path, say: Any = print,
) -> Pair:  # fmt: skip
    """`rounds` rounds of bare and each Gate build, the order turned every round."""
    runs: list[Measured] = []
    names: list[GateTarget | None] = [None, *targets]
    for rnd in range(rounds):
        for t in names if rnd % 2 == 0 else names[::-1]:
            if t is None:
                m = await measure_bare(bare, rnd, seconds, connections, workdir)
            else:
                m = await measure_gate(t, rnd, seconds, connections, workdir)
            say(line(m))
            runs.append(m)
    return Pair(runs, os.getloadavg())


def line(m: Measured) -> str:
    state = "ok" if m.valid else "INVALID: " + "; ".join(m.problems)
    return (
        f"  round {m.round + 1} {m.target:>12}: {m.starts_per_s:>9,.0f} starts/s  "
        f"p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:6.2f} ms  CPU µs/answer {m.server_us:5.1f}"
        f" + Redis {m.redis_us:4.1f}  ({m.requests} answers, "
        f"{m.non2xx} non-2xx) {state}"
    )


def spread(values: list[float]) -> list[float]:
    """[min, median, max]"""
    return [min(values), statistics.median(values), max(values)]


def summary(pair: Pair, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ["bare", *names]:
        ok = [m for m in pair.of(name) if m.valid]
        if not ok:
            out[name] = {"valid_runs": 0}
            continue
        out[name] = {"valid_runs": len(ok)} | {
            fig: spread([getattr(m, fig) for m in ok])
            for fig in ("starts_per_s", "p99_ms", "server_us", "redis_us")
        }
        if name != "bare":
            r = pair.ratios(name)
            out[name]["ratio"] = spread(r) if r else None
            bare_us = out["bare"].get("server_us")
            if bare_us:  # CPU per answer: contention moves it far less than throughput
                out[name]["cpu_ratio"] = round(bare_us[1] / out[name]["server_us"][1], 3)
    return out


def show(s: dict[str, Any]) -> None:
    print(
        "build           starts/s (min median max)   p99 ms (min-max)   CPU µs/answer "
        "(median, +Redis)   starts/s / bare's, same round;  bare CPU / Gate CPU"
    )
    for name, f in s.items():
        if not f.get("valid_runs"):
            print(f"{name:<14}  no valid run")
            continue
        lo, med, hi = f["starts_per_s"]
        ratio = f.get("ratio")
        r = f"{ratio[0]:.2f}-{ratio[2]:.2f}x (median {ratio[1]:.2f})" if ratio else ""
        cpu = f"{f['server_us'][1]:6.1f} + {f['redis_us'][1]:5.1f}"
        c = f"; {f['cpu_ratio']:.2f}x" if f.get("cpu_ratio") else ""
        print(
            f"{name:<14}  {lo:>7,.0f} {med:>7,.0f} {hi:>7,.0f}      "
            f"{f['p99_ms'][0]:6.2f}-{f['p99_ms'][2]:6.2f}      {cpu}          {r}{c}"
        )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.wrkpair", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="turns of every target (default 3)")
    p.add_argument("--seconds", type=int, default=4, help="each wrk run, whole seconds (4)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--wallets", type=int, default=10, help="workspaces per Gate (default 10)")
    p.add_argument("--no-this", action="store_true", help="only the --against builds")
    p.add_argument(
        "--against", action="append", default=[], metavar="NAME=DIR",
        help="another Gate source tree measured beside (repeatable)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("loadtest-out"), help="where wrkpair.json goes")
    a = p.parse_args(argv)
    builds: list[tuple[str, Path | None]] = [] if a.no_this else [("this", None)]
    for spec in a.against:
        name, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "gate" / "__init__.py").exists():
            p.error(f"--against {spec}: give NAME=DIR with a gate/ package in DIR")
        builds.append((name, Path(path).resolve()))
    a.builds = builds
    return a


async def start_targets(
    builds: list[tuple[str, Path | None]], wallets: int, out: Path,
    extra_env: dict[str, str] | None = None,
) -> list[GateTarget]:  # fmt: skip
    targets: list[GateTarget] = []
    try:
        for name, src in builds:
            log = out / f"wrkpair-gate-{name}.log"
            targets.append(await GateTarget.start(name, src, wallets, log, extra_env or {}))
    except BaseException:
        for t in targets:
            await t.close()
        raise
    return targets


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    wrk_path()
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}")
    bare = await BareServer.start(a.out / "wrkpair-bare.log")
    try:
        targets = await start_targets(a.builds, a.wallets, a.out)
        try:
            with tempfile.TemporaryDirectory(prefix="wrkpair-") as tmp:
                pair = await measure_pair(
                    targets, bare, a.rounds, a.seconds, a.connections, Path(tmp)
                )
        finally:
            for t in targets:
                await t.close()
    finally:
        bare.stop()
    names = [n for n, _ in a.builds]
    s = summary(pair, names)
    show(s)
    print(f"load average after: {pair.loadavg}")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_after": pair.loadavg,
        "params": {"rounds": a.rounds, "seconds": a.seconds, "connections": a.connections},
        "summary": s,
        "runs": [vars(m) for m in pair.runs],
    }


def main(argv: list[str] | None = None) -> int:
    import uvloop

    a = parse(argv)
    try:
        result = uvloop.run(main_async(a))
    except BenchError as err:
        print(err, file=sys.stderr)
        return 2
    (a.out / "wrkpair.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 1 if any(not f.get("valid_runs") for f in result["summary"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())

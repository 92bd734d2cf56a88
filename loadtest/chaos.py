"""`python -m loadtest --chaos`: faults one after another under load, books checked after each.

The harness starts its own redis-server (AOF on) and `gate serve` with two processes on it,
creates the workspaces, then runs one phase per fault: --chaos-phase-s seconds of the usual
switch-fleet arrivals, the fault injected a third of the way in, the calls of the phase
ended, the webhooks settled, and then every workspace reconciled to the micro with the
harness's own books (loadtest.books), the ledger and the balance, nothing left reserved, no
call billed twice, and every event Gate holds received by id (the receiver de-duplicates by
`webhook-id`). The faults:

- a Gate worker `kill -9` (the supervisor starts another);
- redis-server `kill -9`, restarted on its AOF, first with `appendfsync everysec`, then with
  `always`. A killed process loses nothing Redis had already written to the kernel, so
  everysec's "up to a second" (two when an fsync stalls) is lost only when the machine
  itself goes down, which a process kill cannot make happen. The harness therefore replays
  every change Gate answered in the last 3 s before the kill (ends, top-ups, adjustments:
  each idempotent) and counts those Redis had not kept: the books take what Redis kept plus
  the replay, and must then be exact. Under `always` none may be missing;
- redis-server `SIGSTOP` for --chaos-outage-s, then `SIGCONT`;
- the webhook receiver down for --chaos-outage-s, then up on the same port;
- a second Gate on the same Redis whose clock runs 2 s ahead (then 2 s behind:
  GATE_CLOCK_SKEW_MS), sharing every kind of request with the first at random, so a call
  starts on one host and ticks or ends on the other.

While Redis is away a prober asks for the wallet and tries call starts every 50 ms: each must
answer 503 quickly, and no start answered 503 may exist once Redis is back (a phantom call).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import os
import secrets
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gate.delivery.events import event_id
from gate.store import keys
from gate.store.redis_client import connect, entries, text
from gate.store.redis_proc import RedisServer
from loadtest import isolation, report, tenants
from loadtest.api import REFUSALS, Answer, Api
from loadtest.books import CallEntry, WsBooks, reconcile
from loadtest.driver import Fleet
from loadtest.options import Options
from loadtest.pricing import Card
from loadtest.procs import GateServer, ProcessError
from loadtest.receiver import Cut, Grant, Receiver
from loadtest.run import machine, progress, rates_path, settle_webhooks
from loadtest.stats import Recorder
from loadtest.wire import Client, Response, WireError

# Changes a switch or a billing client keeps retrying until Gate answers (all idempotent).
PERSISTENT = frozenset({"call_end", "topup", "adjustment"})
REPLAY_WINDOW_S = 3.0  # everysec loses at most 1 s, 2 s when an fsync stalls; 1 s of margin
SKEW_MS = 2000
UNSEEN = -1  # a probe start whose answer never came back to the prober


@dataclass(frozen=True, slots=True)
class Done:
    """A change Gate answered 2xx: what to send again to see whether Redis kept it."""

    at: float  # monotonic, when the answer came
    route: str
    path: str
    body: Mapping[str, Any] | None
    key: str
    headers: Mapping[str, str] | None
    answer: Answer


class ChaosApi(Api):
    """The harness's Api, plus what a switch does through an outage: ends, top-ups and
    adjustments are retried until Gate answers (for up to `persist_s`), and every answered
    change is kept a while so it can be replayed after a Redis crash. Starts are not
    persisted: a switch fails them closed at its timeout."""

    def __init__(self, client: Client, rec: Recorder, persist_s: float) -> None:
        super().__init__(client, rec)
        self.persist_s = persist_s
        self.answered: collections.deque[Done] = collections.deque()

    async def call(
        self,
        route: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        key: str,
        *,
        headers: Mapping[str, str] | None = None,
        retries: int = 0,
        refusals: Collection[str] = REFUSALS,
    ) -> Answer:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (self.persist_s if route in PERSISTENT else 0.0)
        while True:
            answer = await super().call(
                route, method, path, body, key, headers=headers, retries=retries,
                refusals=refusals,
            )  # fmt: skip
            unanswered = answer.status == 0 or answer.status >= 500
            if not unanswered or loop.time() >= give_up:
                break
            await asyncio.sleep(0.2)
        if route in PERSISTENT and answer.ok:
            now = time.monotonic()
            self.answered.append(Done(now, route, path, body, key, headers, answer))
            while self.answered and self.answered[0].at < now - 30:
                self.answered.popleft()
        return answer


class TwoGates(Client):
    """The load client, sending each request to the first Gate or (while `other` is set)
    to a second one at random: a call may start on one host and end on the other."""

    other: Client | None = None
    flips = 0

    async def send(self, raw: bytes) -> Response:
        if self.other is not None:
            self.flips += 1
            if secrets.randbits(1):
                return await self.other.send(raw)
        return await super().send(raw)


@dataclass
class Outcome:
    """One fault: what was done and checked, the figures, and anything that did not hold."""

    fault: str
    checked: str
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ok": self.ok}


class Prober:
    """While Redis is away: GET /v1/wallet and a call start every 50 ms, each timed."""

    def __init__(self, port: int, wb: WsBooks, tag: str) -> None:
        self.client = Client("127.0.0.1", port, limit=4, timeout_s=10.0)
        self.wb = wb
        self.tag = tag
        self.answers: list[tuple[str, int, float]] = []  # (what, status, ms)
        self.starts: dict[str, int] = {}  # call id -> status
        self.codes: collections.Counter[str] = collections.Counter()  # the odd answers
        self._task: asyncio.Task[None] | None = None

    async def _one(self, what: str, method: str, path: str, body: bytes | None, key: str) -> int:
        t0 = time.perf_counter()
        code = ""
        try:
            resp = await self.client.request(method, path, body, {"Authorization": f"Bearer {key}"})
            status = resp.status
            if status >= 300:
                code = str(json.loads(resp.body or b"{}").get("error", {}).get("code", ""))
        except (WireError, TimeoutError, OSError, ValueError, AttributeError):
            status = 0
        self.answers.append((what, status, (time.perf_counter() - t0) * 1000))
        if status not in (200, 201, 503):
            self.codes[f"{what} {status} {code}".strip()] += 1
        return status

    async def _loop(self) -> None:
        n = 0
        while True:
            n += 1
            call_id = f"chaos-{self.tag}-probe-{n}"
            start = (
                b'{"call_id": "%s", "direction": "outbound", "from": "+14155550100", '
                b'"to": "+14155550199", "service": "voice"}' % call_id.encode()
            )
            self.starts[call_id] = UNSEEN  # stop() may cancel it after Gate has committed it
            _, status = await asyncio.gather(
                self._one("wallet", "GET", "/v1/wallet", None, self.wb.admin_key),
                self._one("start", "POST", "/v1/calls", start, self.wb.switch_key),
            )
            self.starts[call_id] = status
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()

    def figures(self) -> dict[str, Any]:
        unavailable = [ms for _, status, ms in self.answers if status == 503]
        ok = collections.Counter(what for what, status, _ in self.answers if status in (200, 201))
        return {
            "probes": len(self.answers),
            "answered_503": len(unavailable),
            "503_max_ms": round(max(unavailable), 1) if unavailable else None,
            "503_p50_ms": round(sorted(unavailable)[len(unavailable) // 2], 1)
            if unavailable
            else None,
            "answered_2xx": dict(sorted(ok.items())),
            "other_answers": dict(sorted(self.codes.items())),
        }


class Chaos:
    """The rig (Redis, Gate, receiver, books) and the phases run against it."""

    def __init__(self, opts: Options, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.run_id = secrets.token_hex(3)
        self.path = rates_path(opts)
        self.card = Card.load(self.path)
        self.data_dir = Path(tempfile.mkdtemp(prefix="gate-chaos-redis-"))
        self.redis: RedisServer | None = None
        self.gate: GateServer | None = None
        self.fsync = "everysec"
        self.rec = Recorder()
        self.client: TwoGates | None = None
        self.api: ChaosApi | None = None
        self.receiver = Receiver(self._on_cut, self._on_grant)
        self.fleet: Fleet | None = None
        self.workspaces: list[WsBooks] = []
        self.outcomes: list[Outcome] = []
        self.seen_early_cuts = 0
        self.phase_started_ms = 0.0
        self.reported: set[str] = set()
        self.traffic: asyncio.Task[None] | None = None
        # A second Gate started before a phase's traffic (a spawned Gate takes seconds to
        # boot on a loaded machine: started at the fault, it missed every call of the phase).
        self.spare: GateServer | None = None

    # -- plumbing ---------------------------------------------------------------------

    def _on_cut(self, workspace_id: str, call_id: str, cut: Cut) -> None:
        if self.fleet is not None:
            self.fleet.on_cut(workspace_id, call_id, cut)

    def _on_grant(self, workspace_id: str, call_id: str, grant: Grant) -> None:
        if self.fleet is not None:
            self.fleet.on_grant(workspace_id, call_id, grant)

    def say(self, text: str) -> None:
        self.console.print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False)

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    async def start_gate(self, skew_ms: int = 0, workers: int | None = None) -> GateServer:
        opts = self.opts
        suffix = f"-skew{skew_ms:+d}" if skew_ms else ""
        return await GateServer.start(
            tick_s=opts.tick_s, buffer_s=opts.buffer_s, grace_s=opts.grace_s,
            workers=workers or max(opts.workers, 2), rates=self.path,
            log=opts.out / f"gate{suffix}.log",
            extra_env={"GATE_REDIS_URL": self.redis_url,
                       "GATE_STALE_AFTER_S": str(opts.stale_after_s),
                       "GATE_CLOCK_SKEW_MS": str(skew_ms)},
        )  # fmt: skip

    async def wait_ready(self, port: int, timeout_s: float = 30.0) -> float:
        """Seconds until GET /readyz answers 200 (a few in a row: both processes)."""
        client = Client("127.0.0.1", port, limit=1, timeout_s=2.0)
        t0 = time.monotonic()
        good = 0
        try:
            while time.monotonic() - t0 < timeout_s:
                try:
                    resp = await client.request("GET", "/readyz")
                    good = good + 1 if resp.status == 200 else 0
                except (WireError, TimeoutError, OSError):
                    good = 0
                if good >= 4:
                    return time.monotonic() - t0
                await asyncio.sleep(0.02)
        finally:
            await client.close()
        raise ProcessError(f"Gate not ready {timeout_s:g} s after Redis came back")

    def worker_pids(self) -> list[int]:
        """The worker processes of the Gate under test (children running spawn_main)."""
        assert self.gate is not None
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid == self.gate.pid and b"spawn_main" in cmd:
                found.append(int(entry))
        return sorted(found)

    # -- one phase --------------------------------------------------------------------

    async def phase(
        self,
        n: int,
        fault: str,
        checked: str,
        inject: Callable[[Outcome], Awaitable[None]],
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> Outcome:
        assert self.api is not None
        out = Outcome(fault, checked)
        t0 = time.monotonic()
        if before is not None:
            await before()  # set up what the fault needs before the phase's calls begin
        arrivals = self.opts.chaos_phase_s
        self.say(f"[bold][{n}/{len(PHASES)}] {fault}[/bold]: {arrivals:g} s of calls")
        opts = dataclasses.replace(
            self.opts, duration=self.opts.chaos_phase_s, seed=self.opts.seed + n
        )
        fleet = Fleet(opts, self.api, self.workspaces, self.card, f"{self.run_id}p{n}")
        self.fleet = fleet
        since_ms = int(time.time() * 1000)
        errors_before = self.rec.error_count
        async with progress(self.console, self.opts.quiet, fleet, self.rec, self.receiver):
            traffic = self.traffic = asyncio.create_task(fleet.run(self.gate_key))
            try:
                await asyncio.sleep(self.opts.chaos_phase_s / 3)
                await inject(out)
            finally:
                await traffic
        await settle_webhooks(self.receiver)
        out.figures["calls_started"] = fleet.started
        out.figures["request_errors"] = self.rec.error_count - errors_before
        for name, count in fleet.checks.items():
            if count:
                out.problems.append(f"{name}: {count}")
        await self.check_books(out, since_ms)
        # The books carry every phase: a problem found before is reported once, where it began.
        out.problems = [p for p in out.problems if p not in self.reported]
        self.reported.update(out.problems)
        books = [p for p in out.problems if p.startswith("ws_")]
        out.figures["reconciliation"] = "exact" if not books else f"{len(books)} new problems"
        out.seconds = round(time.monotonic() - t0, 1)
        verdict = "[green]ok[/green]" if out.ok else f"[red]{len(out.problems)} problems[/red]"
        self.say(f"    {verdict}: {_figures(out.figures)}")
        for problem in out.problems[:10]:
            self.say(f"    [red]{problem}[/red]")
        return out

    @property
    def richest(self) -> WsBooks:
        """The prober's workspace: starts there are refused for Redis, not for money."""
        return max(self.workspaces, key=lambda w: w.expected_balance)

    @property
    def gate_key(self) -> str:
        assert self.gate is not None
        return self.gate.platform_key

    async def check_books(self, out: Outcome, since_ms: int) -> None:
        """Every workspace to the micro, then every event Gate holds since the phase began."""
        assert self.api is not None
        setup = Api(self.api.client, Recorder())
        mismatched = 0
        for wb in self.workspaces:
            wallet = await tenants.wallet(setup, wb.admin_key, wb.id)
            rows = await tenants.ledger_rows(setup, wb.admin_key, wb.id)
            check = reconcile(wb, wallet, rows, self.receiver)
            mismatched += check.mismatched_micros
            out.problems += [f"{wb.id}: {p}" for p in check.problems]
            if check.overspend_micros:
                out.problems.append(f"{wb.id}: overspend {check.overspend_micros} micros")
        calls = {c for wb in self.workspaces for c in wb.calls}
        billed_twice = sum("billed twice" in p for p in out.problems)
        out.figures |= {"mismatched_micros": mismatched, "billed_twice": billed_twice}
        hooks = self.receiver.report()
        if hooks["signature_failures"]:
            out.problems.append(f"webhook signatures that failed: {hooks['signature_failures']}")
        early = hooks["early_cuts"] - self.seen_early_cuts
        self.seen_early_cuts = hooks["early_cuts"]
        if early:
            out.figures["cuts_before_cut_at"] = early
        # Not lost means delivered in the end: a skewed host may have scheduled one seconds
        # ahead, and a receiver outage leaves a backlog.
        waited = time.monotonic()
        while True:
            missing, dropped, held = await self.events_missing(since_ms, calls)
            if not missing or time.monotonic() - waited > 15:
                break
            await asyncio.sleep(0.25)
        if missing or time.monotonic() - waited > 0.1:
            out.figures["events_waited_s"] = round(time.monotonic() - waited, 2)
        out.figures |= {"events": held, "events_missing": len(missing)}
        if dropped:
            out.figures["call_events_dropped_after_end"] = dropped
        out.problems += [f"event {e} never reached the receiver" for e in missing[:20]]

    async def events_missing(self, since_ms: int, calls: set[str]) -> tuple[list[str], int, int]:
        """Events in Gate's streams since `since_ms` that the receiver never got. A call.*
        event of a call that has ended may be dropped by design (README "Webhooks")."""
        client = await connect(self.redis_url)
        missing: list[str] = []
        dropped = held = 0
        try:
            for wb in self.workspaces:
                stream = keys.for_workspace(wb.id).events
                for entry_id, fields in entries(await client.xrange(stream, min=f"{since_ms}-0")):
                    held += 1
                    eid = event_id(wb.id, text(entry_id))
                    if eid in self.receiver.seen:
                        continue
                    plain = {text(k): text(v) for k, v in fields.items()}
                    kind, call_id = plain.get("type", ""), plain.get("d:call_id", "")
                    if kind.startswith("call.") and call_id in calls:
                        dropped += 1
                    else:
                        missing.append(f"{eid} ({kind})")
        finally:
            await client.aclose()
        return missing, dropped, held

    # -- the faults -------------------------------------------------------------------

    async def kill_worker(self, out: Outcome) -> None:
        before = self.worker_pids()
        if not before:
            out.problems.append("no worker process to kill (GATE_WORKERS < 2?)")
            return
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        self.say(f"    kill -9 worker pid {victim}")
        while time.monotonic() - t0 < 30:
            now = [p for p in self.worker_pids() if p != victim]
            if now:
                out.figures["worker_back_s"] = round(time.monotonic() - t0, 2)
                self.say(f"    worker pid {now[0]} started in its place")
                return
            await asyncio.sleep(0.05)
        out.problems.append("no worker started in place of the killed one within 30 s")

    async def kill_redis(self, out: Outcome, fsync: str) -> None:
        assert self.redis is not None and self.api is not None and self.gate is not None
        if fsync != self.fsync:
            client = await connect(self.redis_url)
            try:
                await client.config_set("appendfsync", fsync)
            finally:
                await client.aclose()
            self.fsync = fsync
        port, data_dir = self.redis.port, self.redis.data_dir
        prober = Prober(self.gate.port, self.richest, f"{self.run_id}k{fsync}")
        os.kill(self.redis.pid, signal.SIGKILL)
        killed = time.monotonic()
        self.say(f"    kill -9 redis-server pid {self.redis.pid} (appendfsync {fsync})")
        prober.start()
        await asyncio.sleep(min(self.opts.chaos_outage_s, 3.0))
        self.redis.stop()  # reaps it
        # On this (main) thread: the child's death signal follows the thread that forked it.
        self.redis = RedisServer.start(data_dir, port=port, appendfsync=fsync, timeout=30)
        self.say(f"    redis-server pid {self.redis.pid} restarted on its AOF")
        out.figures["ready_after_redis_s"] = round(await self.wait_ready(self.gate.port), 2)
        await prober.stop()
        out.figures |= prober.figures()
        await self.phantoms(out, prober)
        await self.replay(out, killed, must_keep=fsync == "always")

    async def pause_redis(self, out: Outcome) -> None:
        assert self.redis is not None and self.gate is not None
        prober = Prober(self.gate.port, self.richest, f"{self.run_id}stop")
        os.kill(self.redis.pid, signal.SIGSTOP)
        self.say(f"    SIGSTOP redis-server for {self.opts.chaos_outage_s:g} s")
        prober.start()
        try:
            await asyncio.sleep(self.opts.chaos_outage_s)
        finally:
            os.kill(self.redis.pid, signal.SIGCONT)
        self.say("    SIGCONT")
        out.figures["ready_after_sigcont_s"] = round(await self.wait_ready(self.gate.port), 2)
        await prober.stop()
        out.figures |= prober.figures()
        await self.phantoms(out, prober)

    async def receiver_down(self, out: Outcome) -> None:
        # Past GATE_STALE_AFTER_S Gate ends a call whose switch ignored its cut, by design;
        # the outage stays below it, so what is measured is delivery after the outage.
        down_s = min(self.opts.chaos_outage_s, self.opts.stale_after_s - 3)
        out.figures["receiver_down_s"] = down_s
        port = self.receiver.port
        await self.receiver.stop()
        self.say(f"    webhook receiver down for {down_s:g} s")
        await asyncio.sleep(down_s)
        await self.receiver.start(port)
        up_ms = time.time() * 1000
        self.say("    webhook receiver up again")
        await asyncio.sleep(min(self.opts.chaos_outage_s, 3.0))
        late = [
            c.received_ms - up_ms
            for c in self.receiver.cuts.values()
            if c.cut_at_ms < up_ms <= c.received_ms and c.reason != "stale"
        ]
        out.figures["cuts_due_in_outage"] = len(late)
        if late:
            out.figures["cuts_delivered_after_up_max_ms"] = round(max(late))

    async def start_spare(self, skew_ms: int) -> None:
        self.spare = await self.start_gate(skew_ms, workers=1)

    async def skewed(self, out: Outcome, skew_ms: int) -> None:
        assert self.client is not None
        second = self.spare or await self.start_gate(skew_ms, workers=1)
        self.spare = None
        other = Client("127.0.0.1", second.port, limit=self.opts.connections)
        self.say(f"    a second Gate with GATE_CLOCK_SKEW_MS={skew_ms:+d} shares the traffic")
        self.client.other = other
        flips = self.client.flips
        try:
            # Until every call of the phase has ended, through either Gate.
            assert self.traffic is not None
            await asyncio.wait({self.traffic})
        finally:
            self.client.other = None
            await other.close()
            second.stop()
        out.figures["requests_split"] = self.client.flips - flips
        cut_errors = [
            c.received_ms - c.cut_at_ms
            for key, c in self.receiver.cuts.items()
            if c.reason != "stale" and key[1].startswith(f"lt-{self.run_id}p")
            and c.received_ms >= self.phase_started_ms
        ]  # fmt: skip
        if cut_errors:
            out.figures["cut_minus_cut_at_ms"] = [round(min(cut_errors)), round(max(cut_errors))]
            worst = max(abs(min(cut_errors)), max(cut_errors))
            if worst > abs(skew_ms) + 1500:
                out.problems.append(f"a cut {worst:.0f} ms off its cut_at, beyond the skew")

    async def phantoms(self, out: Outcome, prober: Prober) -> None:
        """No start answered 5xx or nothing may exist now; one that does exist (answered 2xx,
        or cancelled unanswered when the prober stopped) is ended like a call, in the books."""
        assert self.api is not None
        wb = prober.wb
        phantom = 0
        for call_id, status in prober.starts.items():
            look = await self.api.call(
                "call_get", "GET", f"/v1/calls/{call_id}", None, wb.switch_key, retries=3
            )
            if look.status == 404:
                continue
            if status != UNSEEN and not 200 <= status < 300:
                phantom += 1
                out.problems.append(f"phantom call {call_id}: start answered {status}, now live")
            price = self.card.for_call("voice", "outbound", "+14155550100", "+14155550199", None)
            entry = CallEntry(call_id, price, "outbound", 0, how="probe")
            await self._end_probe(wb, entry)
        out.figures["phantom_calls"] = phantom

    async def _end_probe(self, wb: WsBooks, entry: CallEntry) -> None:
        assert self.api is not None
        body = {"duration_s": 0, "hangup_cause": "probe"}
        answer = await self.api.call(
            "call_end", "POST", f"/v1/calls/{entry.call_id}/end", body, wb.switch_key, retries=6
        )
        if answer.ok and answer.body.get("transaction_id"):
            wb.end(entry)

    async def replay(self, out: Outcome, killed: float, *, must_keep: bool) -> None:
        """Send again every change answered in the REPLAY_WINDOW_S before the kill."""
        assert self.api is not None
        recent = [d for d in self.api.answered if killed - REPLAY_WINDOW_S <= d.at <= killed]
        lost: list[float] = []
        for done in recent:
            again = await self.api.call(
                done.route, "POST", done.path, done.body, done.key, headers=done.headers,
                retries=6,
            )  # fmt: skip
            if not again.ok:
                out.problems.append(f"replay of {done.route} {done.path}: {again.status}")
                continue
            if done.route == "call_end":
                kept = again.body == done.answer.body
            else:
                old, new = str(done.answer.body.get("id")), str(again.body.get("id"))
                kept = old == new
                if not kept:  # Redis lost the credit: the replay made it again, anew
                    for wb in self.workspaces:
                        if old in wb.credits:
                            wb.credit(new, wb.credits.pop(old))
            if not kept:
                lost.append(killed - done.at)
        out.figures["replayed"] = len(recent)
        out.figures["lost_by_redis"] = len(lost)
        if lost:
            out.figures["lost_answered_before_kill_max_ms"] = round(max(lost) * 1000)
        if lost and must_keep:
            out.problems.append(
                f"{len(lost)} changes Gate answered were missing after a restart with "
                "appendfsync always"
            )

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        opts = self.opts
        opts.out.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer.start(self.data_dir, appendfsync="everysec")
        self.say(f"redis-server pid {self.redis.pid} on {self.redis.url} (AOF everysec)")
        self.gate = await self.start_gate()
        self.say(f"gate serve pid {self.gate.pid} with workers {self.worker_pids()}")
        self.client = TwoGates("127.0.0.1", self.gate.port, limit=opts.connections,
                               timeout_s=opts.timeout_s)  # fmt: skip
        persist_s = max(opts.chaos_outage_s * 3, 30.0)
        self.api = ChaosApi(self.client, self.rec, persist_s)
        await self.receiver.start()
        try:
            setup = Api(self.client, Recorder())
            self.workspaces = await tenants.create_all(
                setup, self.gate_key, self.receiver, opts.workspaces, opts.balances, self.run_id,
                opts.max_concurrent, opts.auto_recharge_share,
            )  # fmt: skip
            wanted = {int(x) for x in opts.chaos_faults.split(",") if x.strip()}
            for n, (fault, checked, inject) in enumerate(PHASES, 1):
                if wanted and n not in wanted:
                    continue
                self.phase_started_ms = time.time() * 1000

                async def run_fault(out: Outcome, inject: Inject = inject) -> None:
                    await inject(self, out)

                prepare = PREPARE.get(n)
                before = None if prepare is None else functools.partial(prepare, self)
                self.outcomes.append(await self.phase(n, fault, checked, run_fault, before))
        finally:
            if self.spare is not None:
                self.spare.stop()
            await self.receiver.stop()
            await self.client.close()
            self.gate.stop()
            self.redis.stop()
        problems = [f"{o.fault}: {p}" for o in self.outcomes for p in o.problems]
        mismatched = sum(int(o.figures.get("mismatched_micros", 0)) for o in self.outcomes)
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}
            | {"balances": [str(b) for b in opts.balances]},
            "chaos": [o.to_json() for o in self.outcomes],
            "mismatched_micros": mismatched,
            "reconciliation": {
                "ok": not problems,
                "mismatched_micros": mismatched,
                "problem_count": len(problems),
                "problems": problems[:50],
            },
        }


Inject = Callable[[Chaos, Outcome], Awaitable[None]]

PHASES: list[tuple[str, str, Inject]] = [
    ("Gate worker kill -9",
     "the supervisor starts another; books exact; no call billed twice; events by id",
     Chaos.kill_worker),
    ("redis kill -9, AOF everysec",
     "503s while down, 0 phantom starts, changes of the last 3 s replayed, books exact",
     lambda c, o: c.kill_redis(o, "everysec")),
    ("redis kill -9, AOF always",
     "as above, and no answered change missing after the restart",
     lambda c, o: c.kill_redis(o, "always")),
    ("redis SIGSTOP",
     "503s within the deadlines, 0 phantom starts, recovery on SIGCONT, books exact",
     Chaos.pause_redis),
    ("webhook receiver down",
     "pending cuts delivered once it is back; no event lost (by id); books exact",
     Chaos.receiver_down),
    (f"clock +{SKEW_MS // 1000} s on a second Gate",
     "calls started on one Gate end on the other; cuts off by at most the skew; books exact",
     lambda c, o: c.skewed(o, SKEW_MS)),
    (f"clock -{SKEW_MS // 1000} s on a second Gate",
     "as above, the other way",
     lambda c, o: c.skewed(o, -SKEW_MS)),
    (f"{isolation.STREAMS} event streams replaying {isolation.BACKLOG:,} events (one tenant)",
     "call start p99 while it lasts at most 2x idle; books exact",
     isolation.stream_replay),
    (f"{isolation.SLOW_CONNECTIONS:,}-connection slowloris",
     "call start p99 while it lasts at most 2x idle; slow heads closed at the deadline",
     isolation.slowloris),
]  # fmt: skip

# What a phase needs ready before its traffic starts, by phase number: the skewed Gates.
PREPARE: dict[int, Callable[[Chaos], Awaitable[None]]] = {
    n: functools.partial(Chaos.start_spare, skew_ms=skew)
    for n, (fault, _, _) in enumerate(PHASES, 1)
    for skew in (SKEW_MS, -SKEW_MS)
    if fault.startswith(f"clock {'+' if skew > 0 else '-'}{SKEW_MS // 1000} s")
}


def _figures(figures: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in figures.items())


def table(console: Console, outcomes: list[Outcome]) -> None:
    t = Table(title="loadtest --chaos", show_lines=True)
    for name in ("fault", "checked", "figures", "result"):
        t.add_column(name, overflow="fold")
    for o in outcomes:
        result = "[green]ok[/green]" if o.ok else "[red]" + "; ".join(o.problems[:3]) + "[/red]"
        t.add_row(o.fault, o.checked, _figures(o.figures), result)
    console.print(t)


def main(opts: Options, console: Console) -> int:
    import uvloop

    chaos = Chaos(opts, console)
    try:
        result = uvloop.run(chaos.run())
    except (ProcessError, tenants.SetupError, OSError) as err:
        console.print(f"[red]loadtest --chaos: the run could not be made: {err}[/red]")
        return 2
    report.write_json(opts.out / "result.json", result)
    table(console, chaos.outcomes)
    ok = bool(result["reconciliation"]["ok"])
    console.print(
        "[green]CHAOS RECONCILED[/green]: every fault held" if ok
        else f"[red]CHAOS FAILED[/red]: {result['reconciliation']['problem_count']} problems"
    )  # fmt: skip
    return 0 if ok else 1

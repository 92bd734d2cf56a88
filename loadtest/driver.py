"""The switch fleet: Poisson call arrivals, calls that obey cuts, top-ups, and retries."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from loadtest.api import Answer, Api
from loadtest.books import CallEntry, ChargeEntry, WsBooks
from loadtest.options import Options
from loadtest.pricing import Card, Price, gsm_segments
from loadtest.receiver import Cut, Grant
from loadtest.stats import histogram, record_us

# Far ends: (kind, weight). The harness names number types itself, so it never guesses them.
NUMBER_MIX = (("us", 0.60), ("toll_free", 0.10), ("local", 0.05), ("uk", 0.15), ("in", 0.10))
_US_AREAS = ("212", "303", "415", "503", "646", "702", "312", "617")
_TOLL_FREE = ("800", "888", "877", "866")
_SMS_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?"  # GSM-7 basic


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything random about one call, drawn up front from the seeded generator."""

    n: int
    ws: int
    call_id: str
    direction: str
    service: str
    from_: str
    to: str
    number_type: str | None
    planned_s: int
    heartbeat: bool
    retry_start: bool
    repeat_end: bool
    repeat_beat: bool
    unknown: bool
    lost_end: bool = False  # the switch hangs up but its end never reaches Gate
    follow: bool = False  # no heartbeats: hangs up at hangup_at unless an event moves it

    def start_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "call_id": self.call_id,
            "direction": self.direction,
            "from": self.from_,
            "to": self.to,
            "service": self.service,
        }
        if self.number_type is not None:
            body["number_type"] = self.number_type
        if self.heartbeat:
            body["heartbeat_s"] = (
                1  # a promise: their silence, even before the first, is a lost end
            )
        return body


@dataclass(frozen=True, slots=True)
class Hangup:
    how: str  # cut | drain
    cut: Cut | None = None


@dataclass(slots=True)
class Channel:
    """A call the switch has up (from its start answer until its end is answered, or until it
    hangs up when the end is lost), with the last evidence of it Gate may hold: Gate stamped
    its evidence between `lo_ms` and `hi_ms` (wall ms), whatever the request that carried it."""

    lo_ms: float
    hi_ms: float
    end_sent: bool = False

    def evidence(self, sent_ms: float, answered_ms: float, ok: bool) -> None:
        if ok:
            self.lo_ms = max(self.lo_ms, sent_ms)
        self.hi_ms = max(self.hi_ms, answered_ms)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def far_end(rng: random.Random) -> tuple[str, str | None]:
    """A far-end number and the number type the switch would send with it."""
    kind = rng.choices([k for k, _ in NUMBER_MIX], [w for _, w in NUMBER_MIX])[0]
    if kind == "toll_free":
        return f"+1{rng.choice(_TOLL_FREE)}{_digits(rng, 7)}", "toll_free"
    if kind == "uk":
        return ("+4420" if rng.random() < 0.5 else "+447") + _digits(rng, 8), None
    if kind == "in":
        return f"+919{_digits(rng, 9)}", None
    # "local" is no longer the switch's to claim (issue 8): Gate derives number types from
    # the card's [[number_types]], and a claim the card does not make is refused. The cards
    # the harness uses list no local prefixes, so these are plain US calls.
    return f"+1{rng.choice(_US_AREAS)}{_digits(rng, 7)}", None


class Fleet:
    """Drives the traffic of one run and keeps the books of every workspace."""

    def __init__(
        self, opts: Options, api: Api, workspaces: list[WsBooks], card: Card, run_id: str
    ) -> None:
        self.opts = opts
        self.api = api
        self.workspaces = workspaces
        self.card = card
        self.run_id = run_id
        self.rng = random.Random(opts.seed)
        self.money_rng = random.Random(opts.seed + 1)
        self.live: dict[tuple[str, str], asyncio.Future[Hangup]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.arrival_lag = histogram()
        self.started = 0
        self.attempted = 0
        self.refused = 0
        self.hangups: dict[str, int] = {}
        self.checks: dict[str, int] = {
            "rate_mismatch": 0,
            "start_retry_mismatch": 0,
            "end_repeat_mismatch": 0,
            "end_cost_mismatch": 0,
            "end_failed": 0,
            "topup_repeat_mismatch": 0,
            "credit_uncertain": 0,
            "unauthorized_not_flagged": 0,
            "sync_ended_live_call": 0,  # Gate ended a call the switch had up or ended itself
            "sync_not_live_up": 0,  # Gate has no live call the switch has up
            "sync_failed": 0,
            "lost_end_cost_mismatch": 0,
        }
        self.credits = {"topup": 0, "adjustment": 0, "debit": 0, "debit_refused": 0}
        self.unknown_ends = 0
        self.window_s = 0.0
        self.stopping = False
        self.platform_key = ""
        # The switch side of issue 8: the calls each workspace's switch has up, ends lost
        # and waiting for Gate's verdict, hangup_at timers and what moved them.
        self.channels: dict[str, dict[str, Channel]] = {w.id: {} for w in workspaces}
        self.sync_locks = {w.id: asyncio.Lock() for w in workspaces}
        self.lost: dict[tuple[str, str], CallEntry] = {}
        self.grants: dict[tuple[str, str], Grant] = {}
        self.wakers: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.syncs = 0
        self.sync_ended = 0
        self.follow_calls = 0
        self.early_cuts: list[dict[str, Any]] = []  # healthy no-heartbeat calls cut early
        self.sync_rng = random.Random(opts.seed + 2)
        self.sms_rng = random.Random(opts.seed + 3)
        self.sms = {"charged": 0, "refused": 0, "segments": 0}
        self.checks["charge_uncertain"] = 0  # a charge whose answer never came back
        self.checks["charge_failed"] = 0

    # -- webhooks ---------------------------------------------------------------------

    def on_cut(self, workspace_id: str, call_id: str, cut: Cut) -> None:
        """The receiver got a call.cut: hang the call up now, like a switch."""
        fut = self.live.get((workspace_id, call_id))
        if fut is not None and not fut.done():
            fut.set_result(Hangup("cut", cut))

    def on_grant(self, workspace_id: str, call_id: str, grant: Grant) -> None:
        """A call.extended or call.limit moved the call's hangup_at: re-arm its timer."""
        key = (workspace_id, call_id)
        old = self.grants.get(key)
        if old is None or old.seq < grant.seq:
            self.grants[key] = grant
        waker = self.wakers.get(key)
        if waker is not None and not waker.done():
            waker.set_result(None)

    # -- plans ------------------------------------------------------------------------

    def plan(self, n: int) -> Plan:
        o, r = self.opts, self.rng
        ws = r.randrange(len(self.workspaces))
        direction = "inbound" if r.random() < o.inbound_share else "outbound"
        service = "ai_agent" if r.random() < o.ai_share else "voice"
        number, number_type = far_end(r)
        own = f"+1415555{_digits(r, 4)}"
        if direction == "outbound":
            from_, to = own, number
        else:
            # Inbound the far end calls us; a toll-free call is one to our toll-free number.
            from_, to = (own, number) if number_type == "toll_free" else (number, own)
            if number_type == "toll_free":
                from_ = f"+1{r.choice(_US_AREAS)}{_digits(r, 7)}"
        planned = min(int(r.expovariate(1 / o.mean_call_s)), o.max_call_s)
        heartbeat = o.mode == "heartbeat" or (o.mode == "mixed" and r.random() < 0.5)
        retry_start = r.random() < o.retry_start_share
        repeat_end = r.random() < o.repeat_end_share
        repeat_beat = r.random() < o.repeat_end_share
        unknown = r.random() < o.unknown_end_share
        # Drawn only when asked for, so runs without these flags keep their old plans.
        lost_end = o.lost_end_share > 0 and r.random() < o.lost_end_share
        follow = o.no_heartbeat_share > 0 and r.random() < o.no_heartbeat_share
        return Plan(
            n=n,
            ws=ws,
            call_id=f"lt-{self.run_id}-{n}",
            direction=direction,
            service=service,
            from_=from_,
            to=to,
            number_type=number_type,
            planned_s=planned,
            heartbeat=heartbeat and not follow,
            retry_start=retry_start,
            repeat_end=repeat_end,
            repeat_beat=repeat_beat,
            unknown=unknown,
            lost_end=lost_end,
            follow=follow,
        )

    def price(self, p: Plan) -> Price:
        return self.card.for_call(p.service, p.direction, p.from_, p.to, p.number_type)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- the run ----------------------------------------------------------------------

    async def run(self, platform_key: str) -> None:
        """Arrivals for --duration seconds, then let calls end; returns when all have."""
        self.platform_key = platform_key
        loops = [asyncio.create_task(self._topups())]
        if self.opts.sms_rate > 0:
            loops.append(asyncio.create_task(self._sms()))
        if self.opts.wallet_poll_s > 0:
            loops += [asyncio.create_task(self._poll(w)) for w in self.workspaces]
        # The switches sync until every lost end is settled, through the drain.
        syncs = []
        if self.opts.sync_s > 0:
            syncs = [asyncio.create_task(self._syncs(w)) for w in self.workspaces]
        started = time.monotonic()
        try:
            try:
                await self._arrivals()
            finally:
                self.window_s = time.monotonic() - started
                self.stopping = True
                for loop in loops:
                    loop.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
            await self.drain()
            await self.settle_lost()
        finally:
            for loop in syncs:
                loop.cancel()
            await asyncio.gather(*syncs, return_exceptions=True)

    async def _arrivals(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        due = t0
        n = 0
        while n < self.opts.max_calls:
            due += self.rng.expovariate(self.opts.rate)
            if due - t0 >= self.opts.duration:
                return
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            record_us(self.arrival_lag, max(loop.time() - due, 0) * 1e6)
            plan = self.plan(n)
            n += 1
            self.spawn(self._unknown_end(plan) if plan.unknown else self._call(plan))

    async def drain(self) -> None:
        """Wait for live calls to end; past --drain-s hang up whatever is still up."""
        pending = set(self.tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self.opts.drain_s)
        if pending:
            for fut in list(self.live.values()):
                if not fut.done():
                    fut.set_result(Hangup("drain"))
            await asyncio.wait(pending)
        while self.tasks:  # repeats and retries spawned by the last calls
            await asyncio.wait(set(self.tasks))

    # -- one call ---------------------------------------------------------------------

    async def _call(self, plan: Plan) -> None:
        wb = self.workspaces[plan.ws]
        key = (wb.id, plan.call_id)
        fut: asyncio.Future[Hangup] = asyncio.get_running_loop().create_future()
        self.live[key] = fut
        try:
            await self._live_call(plan, wb, fut)
        finally:
            self.live.pop(key, None)
            self.channels[wb.id].pop(plan.call_id, None)
            self.wakers.pop(key, None)

    async def _live_call(self, plan: Plan, wb: WsBooks, fut: asyncio.Future[Hangup]) -> None:
        price = self.price(plan)
        t_send = time.time()
        entry = CallEntry(plan.call_id, price, plan.direction, int(t_send * 1000))
        self.attempted += 1
        body = plan.start_body()
        first = await self.api.call(
            "call_start", "POST", "/v1/calls", body, wb.switch_key, retries=3
        )
        if plan.retry_start and first.status in (200, 201):
            again = await self.api.call(
                "call_start", "POST", "/v1/calls", body, wb.switch_key, retries=3
            )
            if again.status != 200 or _fixed(again.body) != _fixed(first.body):
                self.checks["start_retry_mismatch"] += 1
        if first.status in (402, 429):
            self.refused += 1
            return
        if not first.ok:
            if 400 <= first.status < 500:
                return  # refused before anything was held
            # No answer: fail closed, and release whatever Gate may hold with a 0 s end.
            await self._end(plan, wb, entry, 0, "failed_start")
            return
        answered_ms = time.time() * 1000
        self.started += 1
        self.api.rec.started()
        a = first.body
        if (
            a.get("rate_per_min_micros") != price.per_min
            or a.get("increment") != price.increment
            or round(float(a.get("connect_fee_usd", -1)) * 1_000_000) != price.fee
        ):
            self.checks["rate_mismatch"] += 1
        limit = a.get("max_duration_s")
        entry.start_limit = None if limit is None else int(limit)
        entry.start_grant = int(a.get("granted_s") or 0)
        entry.no_heartbeat = plan.follow
        entry.answer_ms = answered_ms
        # Gate answered (its first evidence) between our send and its answer.
        channel = Channel(t_send * 1000, answered_ms)
        self.channels[wb.id][plan.call_id] = channel
        if plan.follow:
            self.follow_calls += 1
            # hangup_at is whole seconds: the switch arms its timer there, never later.
            start_grant = Grant(0, int(a.get("hangup_at") or 0) * 1000, limit is not None)
            how, hung_up = await self._follow(plan, wb, t_send, fut, start_grant)
        else:
            how, hung_up = await self._talk(plan, wb, t_send, fut, channel)
        if plan.lost_end:
            await self._lose_end(wb, entry, channel, t_send, how)
            return
        await self._end(plan, wb, entry, int(hung_up - t_send), how, channel)

    async def _lose_end(
        self, wb: WsBooks, entry: CallEntry, channel: Channel, t_send: float, how: str
    ) -> None:
        """The switch hangs up and its end is lost: it stops listing the call in its syncs.

        The channel goes down between syncs (never while one listing it is in flight), so the
        evidence Gate holds is what the channel recorded; the books learn later what Gate
        billed (settle_lost checks it) and price it themselves.
        """
        async with self.sync_locks[wb.id]:
            hung_up = time.time()
            self.channels[wb.id].pop(entry.call_id, None)
            entry.lost = True
            entry.true_duration = int(hung_up - t_send)
            entry.how = how
            entry.end_sent_ms = hung_up * 1000
            entry.evidence_lo_ms, entry.evidence_hi_ms = channel.lo_ms, channel.hi_ms
            self.hangups[how] = self.hangups.get(how, 0) + 1
            wb.end(entry)  # duration 0 until Gate's verdict is known
            self.lost[(wb.id, entry.call_id)] = entry

    async def _talk(
        self,
        plan: Plan,
        wb: WsBooks,
        t_send: float,
        fut: asyncio.Future[Hangup],
        channel: Channel,
    ) -> tuple[str, float]:
        """Keep the call up until its planned end, a cut, or a heartbeat answer of hangup;
        returns how it ended and when (wall seconds)."""
        end_at = t_send + plan.planned_s
        next_beat = t_send + self.opts.heartbeat_s if plan.heartbeat else float("inf")
        seq = 0
        while True:
            now = time.time()
            if now >= end_at:
                return "plan", now
            wait = min(end_at, next_beat) - now
            if wait > 0:
                done, _ = await asyncio.wait({fut}, timeout=wait)
                if done:
                    return fut.result().how, time.time()
            if time.time() >= next_beat:
                seq += 1
                next_beat += self.opts.heartbeat_s
                beat = {"elapsed_s": int(time.time() - t_send), "seq": seq}
                path = f"/v1/calls/{plan.call_id}/heartbeat"
                sent_ms = time.time() * 1000
                answer = await self.api.call(
                    "heartbeat", "POST", path, beat, wb.switch_key, retries=2
                )
                channel.evidence(sent_ms, time.time() * 1000, answer.ok)
                if plan.repeat_beat:  # a stale repeat: it must change nothing
                    await self.api.call("heartbeat", "POST", path, beat, wb.switch_key)
                if answer.ok and answer.body.get("action") == "hangup":
                    return "heartbeat", time.time()

    async def _follow(
        self,
        plan: Plan,
        wb: WsBooks,
        t_send: float,
        fut: asyncio.Future[Hangup],
        start: Grant,
    ) -> tuple[str, float]:
        """A switch that sends no heartbeats: it hangs up at its planned end, on a call.cut,
        or when its timer reaches hangup_at, which only call.extended / call.limit move."""
        key = (wb.id, plan.call_id)
        end_at = t_send + plan.planned_s
        loop = asyncio.get_running_loop()
        while True:
            waker: asyncio.Future[None] = loop.create_future()
            self.wakers[key] = waker  # before reading the grant: no event slips between
            grant = self.grants.get(key, start)
            now = time.time()
            if now >= end_at:
                return "plan", now
            if now * 1000 >= grant.hangup_at_ms:
                return await self._timer_fired(plan, wb, grant), now
            wait = min(end_at, grant.hangup_at_ms / 1000) - now
            woken: set[asyncio.Future[Any]] = {fut, waker}
            done, _ = await asyncio.wait(woken, timeout=wait)
            if fut in done:
                return fut.result().how, time.time()

    async def _timer_fired(self, plan: Plan, wb: WsBooks, grant: Grant) -> str:
        """The switch hangs up at hangup_at. Fine when Gate said the money ends there; when
        it never said so, look (as an observer, before the end is sent) whether Gate had in
        fact more time for the call: then a healthy call was cut early."""
        if grant.limited:
            return "hangup_at"
        path = f"/v1/calls/{plan.call_id}"
        look = await self.api.call("call_get", "GET", path, None, wb.switch_key, retries=2)
        body = look.body
        if look.ok and body.get("state") == "live" and body.get("max_duration_s") is None:
            self.early_cuts.append(
                {"workspace_id": wb.id, "call_id": plan.call_id,
                 "told_hangup_at_ms": grant.hangup_at_ms, "gate_hangup_at": body.get("hangup_at"),
                 "at_ms": round(time.time() * 1000)}
            )  # fmt: skip
            return "early"
        return "hangup_at"

    async def _end(
        self,
        plan: Plan,
        wb: WsBooks,
        entry: CallEntry,
        duration: int,
        how: str,
        channel: Channel | None = None,
    ) -> None:
        if channel is not None:  # listed in syncs until its end is answered
            channel.end_sent = True
        entry.duration = duration
        entry.how = how
        entry.end_sent_ms = time.time() * 1000
        self.hangups[how] = self.hangups.get(how, 0) + 1
        body = {
            "duration_s": duration,
            "hangup_cause": how,
            "direction": plan.direction,
            "from": plan.from_,
            "to": plan.to,
            "service": plan.service,
        }
        if plan.number_type is not None:
            body["number_type"] = plan.number_type
        path = f"/v1/calls/{plan.call_id}/end"
        # The books take the end whatever Gate answers: an end that never lands shows up as
        # a missing ledger row and money still reserved.
        wb.end(entry)
        answer = await self.api.call("call_end", "POST", path, body, wb.switch_key, retries=6)
        if channel is not None:
            self.channels[wb.id].pop(plan.call_id, None)
        if not answer.ok:
            self.checks["end_failed"] += 1
            return
        entry.gate_cost = int(answer.body.get("cost_micros", -1))
        entry.gate_leak_s = int(answer.body.get("leakage_s") or 0)
        if entry.gate_cost != money(entry, answer.body):
            self.checks["end_cost_mismatch"] += 1
        if how == "unknown" and duration == 0:
            # A 0 s end of a call Gate never saw is the failure policy's cleanup: remembered,
            # no ledger row (issue 8). The books drop it; a row would show up as unexpected.
            if answer.body.get("flag") != "never_started" or answer.body.get("transaction_id"):
                self.checks["unauthorized_not_flagged"] += 1
            wb.calls.pop(entry.call_id, None)
        elif how == "failed_start" and duration == 0 and not answer.body.get("transaction_id"):
            # The start never committed (a 5xx in an outage): the 0 s end wrote no row either.
            wb.calls.pop(entry.call_id, None)
        elif how == "unknown" and not answer.body.get("unauthorized_call"):
            self.checks["unauthorized_not_flagged"] += 1
        if plan.repeat_end:
            again = await self.api.call("call_end", "POST", path, body, wb.switch_key, retries=6)
            if again.ok and again.body != answer.body:
                self.checks["end_repeat_mismatch"] += 1

    async def _unknown_end(self, plan: Plan) -> None:
        """An end for a call Gate never saw (the switch failed open): billed all the same."""
        wb = self.workspaces[plan.ws]
        call_id = plan.call_id + "-unseen"
        ghost = dataclasses.replace(plan, call_id=call_id)
        entry = CallEntry(call_id, self.price(plan), plan.direction, int(time.time() * 1000))
        self.unknown_ends += 1
        await self._end(ghost, wb, entry, plan.planned_s, "unknown")

    # -- call sync and lost ends --------------------------------------------------------

    async def _syncs(self, wb: WsBooks) -> None:
        """Every --sync-s (from a random phase) list the calls this switch has up."""
        loop = asyncio.get_running_loop()
        period = self.opts.sync_s
        due = loop.time() + self.sync_rng.random() * period
        while True:
            await asyncio.sleep(max(due - loop.time(), 0))
            due = max(due + period, loop.time())
            await self.sync(wb)

    async def sync(self, wb: WsBooks) -> None:
        """One POST /v1/calls/sync: listed calls gain evidence; the lost ends Gate ends come
        back with what it billed; nothing the switch still has up may be ended or unknown."""
        chans = self.channels[wb.id]
        async with self.sync_locks[wb.id]:
            ids = list(chans)
            up = {cid for cid, ch in chans.items() if not ch.end_sent}
            sent_ms = time.time() * 1000
            answer = await self.api.call(
                "call_sync", "POST", "/v1/calls/sync", {"call_ids": ids}, wb.switch_key,
                retries=2,
            )  # fmt: skip
            answered_ms = time.time() * 1000
            for cid in ids:
                ch = chans.get(cid)
                if ch is not None:
                    ch.evidence(sent_ms, answered_ms, answer.ok)
            self.syncs += 1
            if not answer.ok:
                self.checks["sync_failed"] += 1
                return
            for one in answer.body.get("ended", ()):
                self.sync_ended += 1
                entry = self.lost.get((wb.id, str(one["call_id"])))
                if entry is None:
                    self.checks["sync_ended_live_call"] += 1
                else:
                    self._settled(wb, entry, one)
            for cid in answer.body.get("not_live", ()):
                ch = chans.get(cid)
                if cid in up and ch is not None and not ch.end_sent:
                    self.checks["sync_not_live_up"] += 1

    def _settled(self, wb: WsBooks, entry: CallEntry, ended: dict[str, Any]) -> None:
        """Gate ended a lost end: the books take its billed duration, priced by the books."""
        self.lost.pop((wb.id, entry.call_id), None)
        flag = str(ended.get("flag") or "")
        entry.ended_by = {"lost_end": "sync", "stale": "stale"}.get(flag, flag or "end")
        entry.duration = int(ended["duration_s"])
        entry.gate_cost = int(ended.get("cost_micros", -1))
        entry.gate_leak_s = int(ended.get("leakage_s") or 0)
        if entry.gate_cost != money(entry, ended):
            self.checks["lost_end_cost_mismatch"] += 1

    def _settle_by(self, e: CallEntry) -> float:
        """When Gate must have ended a lost end (wall ms), by sync or by heartbeat silence."""
        slack = 2000 + self.opts.tick_s * 1000
        if self.opts.sync_s > 0:
            min_age = e.t_send_ms + 5000  # GATE_SYNC_MIN_AGE_S
            return max(e.end_sent_ms, min_age) + self.opts.sync_s * 1000 + slack
        return e.evidence_hi_ms + self.opts.stale_after_s * 1000 + slack

    async def settle_lost(self) -> None:
        """After the drain: wait for Gate to end every lost end. Syncs keep running; a lost
        end past the time Gate must have ended it is looked up (GET /v1/calls/{id})."""
        if not self.lost:
            return
        loop = asyncio.get_running_loop()
        last = max(self._settle_by(e) for e in self.lost.values())
        deadline = loop.time() + max(last / 1000 - time.time(), 0) + 10
        while self.lost and loop.time() < deadline:
            now_ms = time.time() * 1000
            for (ws_id, call_id), e in list(self.lost.items()):
                if now_ms < self._settle_by(e):
                    continue
                wb = next(w for w in self.workspaces if w.id == ws_id)
                path = f"/v1/calls/{call_id}"
                look = await self.api.call("call_get", "GET", path, None, wb.switch_key, retries=2)
                if look.ok and look.body.get("state") == "ended":
                    self._settled(wb, e, look.body)
            await asyncio.sleep(0.5)

    # -- money ------------------------------------------------------------------------

    async def _topups(self) -> None:
        n = 0
        r = self.money_rng
        if self.opts.topup_rate <= 0:
            return
        while not self.stopping:
            await asyncio.sleep(r.expovariate(self.opts.topup_rate))
            wb = self.workspaces[r.randrange(len(self.workspaces))]
            n += 1
            pick = r.random()
            if pick < 0.6:
                cents = r.randint(100, 500)
                self.spawn(self._topup(wb, n, cents, r.random() < self.opts.repeat_end_share))
            else:
                cents = r.randint(10, 200) * (-1 if pick > 0.9 else 1)
                self.spawn(self._adjust(wb, n, cents))

    async def _topup(self, wb: WsBooks, n: int, cents: int, repeat: bool) -> None:
        body = {"amount_usd": str(Decimal(cents) / 100), "payment_method_id": "pm_card_visa"}
        headers = {"Idempotency-Key": f"lt-{self.run_id}-topup-{n}"}
        answer = await self.api.call(
            "topup", "POST", "/v1/wallet/topup", body, wb.admin_key, headers=headers, retries=4
        )
        self._credited(wb, answer, cents * 10_000, "topup")
        if repeat and answer.ok:
            again = await self.api.call(
                "topup", "POST", "/v1/wallet/topup", body, wb.admin_key, headers=headers,
                retries=4,
            )  # fmt: skip
            if again.body.get("id") != answer.body.get("id"):
                self.checks["topup_repeat_mismatch"] += 1

    async def _adjust(self, wb: WsBooks, n: int, cents: int) -> None:
        body = {
            "amount_usd": str(Decimal(cents) / 100),
            "type": "refund" if cents > 0 and n % 3 == 0 else "adjustment",
            "description": "load test mid-call " + ("credit" if cents > 0 else "debit"),
            "reference": f"lt-{self.run_id}-adj-{n}",
        }
        path = f"/v1/workspaces/{wb.id}/adjustments"
        answer = await self.api.call("adjustment", "POST", path, body, self.platform_key, retries=4)
        if answer.status == 402:
            self.credits["debit_refused"] += 1
            return
        self._credited(wb, answer, cents * 10_000, "adjustment" if cents > 0 else "debit")

    def _credited(self, wb: WsBooks, answer: Answer, amount: int, kind: str) -> None:
        if answer.status == 0 or answer.status >= 500:
            self.checks["credit_uncertain"] += 1  # it may or may not have landed
            return
        if not answer.ok:
            return
        row_id, posted = str(answer.body["id"]), int(answer.body["amount_micros"])
        wb.credit(row_id, amount)  # the books hold what was asked; a different row is caught
        self.credits[kind] += 1
        if posted != amount:
            self.checks["credit_uncertain"] += 1

    async def _sms(self) -> None:
        """SMS charges at --sms-rate: GSM-7 texts of 1 to 400 characters (1 to 3 segments)."""
        r = self.sms_rng
        n = 0
        while not self.stopping:
            await asyncio.sleep(r.expovariate(self.opts.sms_rate))
            wb = self.workspaces[r.randrange(len(self.workspaces))]
            n += 1
            text = "".join(r.choice(_SMS_CHARS) for _ in range(r.randint(1, 400)))
            self.spawn(self._charge(wb, f"lt-{self.run_id}-sms-{n}", text))

    async def _charge(self, wb: WsBooks, charge_id: str, text: str) -> None:
        body = {"charge_id": charge_id, "service": "sms", "text": text, "to": "+14155550123"}
        answer = await self.api.call("charge", "POST", "/v1/charges", body, wb.switch_key,
                                     retries=4)  # fmt: skip
        if answer.status == 402:
            self.sms["refused"] += 1
        elif answer.status == 0 or answer.status >= 500:
            self.checks["charge_uncertain"] += 1  # it may or may not have landed
        elif not answer.ok:
            self.checks["charge_failed"] += 1
        else:
            entry = ChargeEntry(charge_id, gsm_segments(text), self.card.sms_segment)
            wb.charges[charge_id] = entry
            self.sms["charged"] += 1
            self.sms["segments"] += entry.segments

    async def _poll(self, wb: WsBooks) -> None:
        await asyncio.sleep(self.money_rng.random() * self.opts.wallet_poll_s)
        while not self.stopping:
            await self.api.call("wallet", "GET", "/v1/wallet", None, wb.admin_key)
            await asyncio.sleep(self.opts.wallet_poll_s)


def _fixed(body: Any) -> Any:
    """A start answer less hangup_in_ms, which counts from now and so differs on a repeat."""
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k != "hangup_in_ms"}
    return body


def money(entry: CallEntry, ended: dict[str, Any]) -> int:
    """What an end answer's cost_micros must be: the books' price, less the billable seconds
    a plan allowance covered (`allowance_used_s`, only on plan calls)."""
    return entry.price.cost(entry.duration, int(ended.get("allowance_used_s") or 0))

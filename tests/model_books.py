"""The pure-Python reference model of one workspace's calls and money, for tests/test_model.py.

It follows docs/design.md §3 and §4 step by step, in integer micros and unix milliseconds, with no
Redis and no Gate code except the rating formula (gate/calls/rating.py, tested on its own):
what a start holds and grants, when a call is limited and cut, what a tick, a heartbeat, an
answer, a sync and an end do, who gets money first when it runs short (the ticker handles
due calls in due order, ties by call id), and what every finished call costs. The test
drives Gate and this model with the same steps and compares balances, holds, horizons and
cuts after each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gate.calls.rating import Rate


@dataclass(frozen=True)
class Config:
    buffer_s: int
    tick_s: int
    grace_s: int  # the workspace's inbound grace (docs/design.md §3), within the platform's ceiling
    max_call_s: int
    ring_s: int
    stale_after_s: int
    tolerance_s: int  # how far the switch's clock may run ahead of the gate's
    sync_min_age_s: int


@dataclass
class Call:
    id: str
    dir: str
    svc: str
    rate: Rate
    t0: int
    ans: int = 0  # answer time, ms; 0 while ringing
    billed_s: int = 0  # talk time seen by ticks and heartbeats
    horizon_s: int = 0  # seconds paid for: billed and held
    held: int = 0  # micros held for the call = cost(horizon)
    cut: int = 0  # ms the call must hang up at; 0 while not limited
    cut_sent: bool = False
    limit_told: bool = False  # an inbound limit was announced (call.limit)
    hseq: int = 0
    beat_ms: int = 0  # last heartbeat
    heartbeat_s: int = 0  # the most talk time a heartbeat reported (clamped)
    evidence_ms: int = 0  # last moment the switch showed the call up
    reports: bool = False  # the switch reports liveness (promised heartbeats, or a sync)
    clamped: bool = False
    due: int = 0

    def cost(self, seconds: int) -> int:
        return self.rate.cost(max(seconds, 0))


@dataclass
class Ended:
    duration_s: int
    cost_micros: int
    flag: str | None
    clamped: bool = False
    # A call the gate ended itself (stale, lost_end): the switch's later, longer end bills
    # the rest once (docs/design.md §4: time kept up is billed at end, never dropped).
    swept: Call | None = None


@dataclass
class Books:
    cfg: Config
    balance: int
    threshold: int | None = None  # the workspace's inbound_limit_threshold_micros
    zero_since: int | None = None
    suspended: bool = False
    calls: dict[str, Call] = field(default_factory=dict)
    ended: dict[str, Ended] = field(default_factory=dict)
    # The switch's signals (docs/design.md §5) not yet compared: (type, call id, reason or
    # max_duration_s), in the order Gate must write them.
    signals: list[tuple[str, str, str]] = field(default_factory=list)
    # A call ended past what its money paid for (inbound grace, or time kept past a cut):
    # the only ways the balance may go below zero (docs/design.md §11.4).
    unpaid_time: bool = False

    @property
    def reserved(self) -> int:
        return sum(c.held for c in self.calls.values())

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    # -- docs/design.md §3: the call protocol -----------------------------------------------------

    def start(
        self, call_id: str, direction: str, service: str, rate: Rate, now: int, *,
        answered: bool, promised: bool,
    ) -> str:  # fmt: skip
        """'allow', 'insufficient_balance' or 'workspace_suspended'."""
        cfg = self.cfg
        c = Call(call_id, direction, service, rate, now, reports=promised)
        if answered:
            c.ans = c.evidence_ms = now
        target = min(cfg.buffer_s, cfg.max_call_s)
        needed = c.cost(target)
        available = self.available
        if needed > 0:
            if direction == "outbound" and available < needed:
                return "insufficient_balance"
            if (
                not self.suspended
                and self.zero_since is not None
                and self.balance <= 0
                and now - self.zero_since > cfg.grace_s * 1000
            ):
                self.suspended = True
            if self.suspended:
                return "workspace_suspended"
        threshold = needed if self.threshold is None else self.threshold
        if available >= needed and (direction == "outbound" or available >= threshold):
            c.horizon_s, c.held = target, needed
        else:
            # Inbound below the threshold: what the money pays for, plus the grace.
            c.horizon_s = self._paid(c, max(available, 0), cfg.max_call_s)
            if c.horizon_s + self._grace(c) <= 0:
                return "insufficient_balance"
            c.held = c.cost(c.horizon_s)
            self._set_cut(c, now, limited=True)
        self.calls[call_id] = c
        self._schedule(c, now)
        return "allow"

    def answer(self, call_id: str, now: int) -> None:
        c = self.calls[call_id]
        if c.ans:
            return
        c.ans = c.evidence_ms = max(now, c.t0)
        if c.cut:
            self._set_cut(c, now, limited=True)
        self._schedule(c, now)

    def heartbeat(self, call_id: str, elapsed_s: int, seq: int, now: int) -> bool:
        """The gate's answer: True for "hangup"."""
        c = self.calls[call_id]
        if seq > c.hseq:
            bound = self._clock_bound(c, now)
            if elapsed_s > bound:
                elapsed_s, c.clamped = bound, True
            if not c.ans:  # a heartbeat of a ringing call: it was answered elapsed_s ago
                c.ans = max(now - elapsed_s * 1000, c.t0)
            c.hseq, c.beat_ms, c.evidence_ms, c.reports = seq, now, now, True
            c.heartbeat_s = max(c.heartbeat_s, elapsed_s)
            self._grow(c, elapsed_s, now)
            self._schedule(c, now)
        limit = c.horizon_s + self._grace(c)
        return bool(c.cut) and (now >= c.cut or elapsed_s >= limit)

    def end(self, call_id: str, duration_s: int, now: int) -> Ended:
        c = self.calls[call_id]
        bound = self._clock_bound(c, now)
        clamped = duration_s > bound
        had_hold = c.held > 0
        # never below what the switch's own heartbeats showed (issue 21)
        duration_s = max(min(duration_s, bound), c.heartbeat_s)
        result = self._finish(c, duration_s, now, None, clamped)
        if had_hold:
            self._wake_limited(now)
        return result

    def sync(self, listed: set[str], now: int) -> list[str]:
        """The calls the sync ended (lost), in any order."""
        for call_id in listed & self.calls.keys():
            c = self.calls[call_id]
            c.evidence_ms, c.reports = now, True
        lost, released = [], False
        for c in list(self.calls.values()):
            if c.id in listed or now - c.t0 < self.cfg.sync_min_age_s * 1000:
                continue
            if c.ans:
                # to the last evidence plus one tick, never past the gate's clock (issue 21)
                e = max((now - c.ans) // 1000, 0)
                duration = max(
                    min(self._evidence_s(c) + self.cfg.tick_s, e, self._granted(c),
                        self.cfg.max_call_s),
                    0,
                )  # fmt: skip
                flag = "lost_end"
            else:
                duration, flag = 0, "never_started"
            released = released or c.held > 0
            self._finish(c, duration, now, flag)
            lost.append(c.id)
        if released:
            self._wake_limited(now)
        return lost

    def credit(self, micros: int, now: int) -> None:
        """A top-up or an adjustment (credits wake limited calls)."""
        self._post(micros, now)
        if micros > 0:
            self._wake_limited(now)

    def may_debit(self, micros: int) -> bool:
        return self.available - micros >= 0

    # -- docs/design.md §4: the ticker ------------------------------------------------------------

    def tick(self, now: int) -> list[str]:
        """Every call due by now, in due order (ties by id); returns the calls that ended."""
        finished = []
        for _, call_id in sorted((c.due, c.id) for c in self.calls.values() if c.due <= now):
            c = self.calls[call_id]
            if not c.ans:
                if now >= c.t0 + self.cfg.ring_s * 1000:
                    self._send_cut(c, "ring_timeout")
                    self._finish(c, 0, now, "ring_timeout")
                    finished.append(call_id)
                else:
                    self._schedule(c, now)
                continue
            e = max((now - c.ans) // 1000, 0)
            stale_ms = self.cfg.stale_after_s * 1000
            silent = c.reports and now - self._evidence_ms(c) > stale_ms
            ignored_cut = c.cut_sent and c.cut and now - c.cut > stale_ms
            if silent or ignored_cut or e >= self.cfg.max_call_s:
                self._send_cut(c, "stale")
                self._finish(c, self._stale_duration(c, e), now, "stale")
                finished.append(call_id)
                continue
            self._grow(c, e, now)
            if c.cut and not c.cut_sent and now >= c.cut:
                self._send_cut(c, "limit" if c.dir == "inbound" else "balance")
            self._schedule(c, now)
        return finished

    # -- the rules underneath -------------------------------------------------------------

    def _grace(self, c: Call) -> int:
        return self.cfg.grace_s if c.dir == "inbound" else 0

    def _granted(self, c: Call) -> int:
        return c.horizon_s + (self._grace(c) if c.cut else 0)

    def hangup_at_ms(self, c: Call) -> int:
        return c.cut or (c.ans or c.t0) + c.horizon_s * 1000

    def _paid(self, c: Call, budget: int, cap: int) -> int:
        """The longest time, at most cap, whose cost the budget pays."""
        if budget < 0:
            return 0
        return min(c.rate.paid_seconds(budget), cap)

    def _clock_bound(self, c: Call, now: int) -> int:
        since = c.ans or c.t0
        bound = -(-(now - since) // 1000) + self.cfg.tolerance_s
        return max(min(bound, self.cfg.max_call_s), 0)

    def _evidence_ms(self, c: Call) -> int:
        return max(c.evidence_ms, c.beat_ms, c.ans)

    def _evidence_s(self, c: Call) -> int:
        return (self._evidence_ms(c) - c.ans) // 1000 if c.ans else 0

    def _stale_duration(self, c: Call, e: int) -> int:
        """To the last evidence plus one tick, never past what was granted (docs/design.md §4); a
        switch that reports nothing has its answer as its only evidence (issue 21)."""
        base = self._evidence_s(c)
        return max(min(base + self.cfg.tick_s, e, self._granted(c), self.cfg.max_call_s), 0)

    def _set_cut(self, c: Call, now: int, *, limited: bool) -> None:
        """Fix the cut time from the horizon, or lift it; inbound limits are announced."""
        if limited:
            cut = (c.ans or now) + (c.horizon_s + self._grace(c)) * 1000
            if cut != c.cut:
                c.cut_sent = False
                if c.dir == "inbound":
                    c.limit_told = True
                    max_duration = str(c.horizon_s + self._grace(c))
                    self.signals.append(("call.limit", c.id, max_duration))
            c.cut = cut
        elif c.cut:
            c.cut, c.cut_sent = 0, False
            if c.limit_told:  # lifted: a new limit with max_duration_s null
                c.limit_told = False
                self.signals.append(("call.limit", c.id, ""))

    def _send_cut(self, c: Call, reason: str) -> None:
        c.cut_sent = True
        self.signals.append(("call.cut", c.id, reason))

    def _grow(self, c: Call, e: int, now: int) -> None:
        """Bill up to e and keep the horizon a buffer ahead as far as the money goes."""
        c.billed_s = max(c.billed_s, e)
        target = min(c.billed_s + self.cfg.buffer_s, self.cfg.max_call_s)
        if target <= c.horizon_s and not c.cut:
            return
        available = self.available
        want = c.cost(target) - c.held
        need = want
        if c.cut and c.dir == "inbound":  # a limit is lifted only above the threshold
            threshold = c.cost(self.cfg.buffer_s) if self.threshold is None else self.threshold
            need = max(want, threshold)
        if need <= available:
            if target > c.horizon_s:
                c.held += max(want, 0)
                c.horizon_s = target
            self._set_cut(c, now, limited=False)
            return
        cap = self.cfg.max_call_s if (c.cut or c.dir == "inbound") else target
        horizon = self._paid(c, c.held + max(available, 0), cap)
        if horizon > c.horizon_s:
            c.horizon_s = horizon
            c.held = max(c.cost(horizon), c.held)
        self._set_cut(c, now, limited=True)

    def _schedule(self, c: Call, now: int) -> None:
        if not c.ans:
            c.due = c.t0 + self.cfg.ring_s * 1000
            return
        due = now + self.cfg.tick_s * 1000
        if c.cut and not c.cut_sent and c.cut < due:
            due = c.cut
        c.due = min(due, c.ans + self.cfg.max_call_s * 1000)

    def _wake_limited(self, now: int) -> None:
        for c in self.calls.values():
            if c.cut:
                c.due = now

    def _post(self, amount: int, now: int) -> None:
        self.balance += amount
        if self.balance > 0:
            self.zero_since, self.suspended = None, False
        elif self.zero_since is None:
            self.zero_since = now

    def _finish(
        self, c: Call, duration_s: int, now: int, flag: str | None, clamped: bool = False
    ) -> Ended:
        amount = c.cost(duration_s)
        if duration_s <= c.horizon_s:  # §11.4: obeying the cut never costs more than was held
            assert amount <= c.held, (c, duration_s, amount)
        else:
            self.unpaid_time = True
        del self.calls[c.id]
        if not (flag in ("ring_timeout", "never_started") and amount == 0):
            self._post(-amount, now)  # one ledger row for the whole call
        swept = c if flag in ("stale", "lost_end") else None
        result = Ended(duration_s, amount, flag, clamped or c.clamped, swept)
        self.ended[c.id] = result
        return result

    def repeat_end(self, call_id: str, duration_s: int, now: int) -> Ended:
        """An end for a call that ended: the first result, or a swept call's late end."""
        first = self.ended[call_id]
        c = first.swept
        if c is None or duration_s <= first.duration_s:
            return first
        bound = self._clock_bound(c, now)
        clamped = duration_s > bound
        duration_s = min(duration_s, bound)
        if duration_s <= first.duration_s:
            return first
        amount = c.cost(duration_s)
        self.unpaid_time = True
        self._post(first.cost_micros - amount, now)  # the late_end row
        result = Ended(duration_s, amount, first.flag, clamped or first.clamped)
        self.ended[call_id] = result
        return result

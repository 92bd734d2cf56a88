"""The harness's own books, kept from what it did and was told, and their reconciliation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from loadtest.pricing import Price
from loadtest.receiver import Receiver

CALL_ROW_TYPES = frozenset({"call", "ai_agent"})


@dataclass
class CallEntry:
    """One call the harness ended (or an `end` it sent for a call Gate never saw)."""

    call_id: str
    price: Price
    direction: str
    t_send_ms: int  # wall ms, floored, when the start was sent: the switch's answer time
    duration: int = 0
    how: str = ""  # plan | cut | heartbeat | drain | failed_start | unknown
    end_sent_ms: float = 0.0
    start_limit: int | None = None  # max_duration_s of the start answer
    start_grant: int = 0  # granted_s of the start answer
    no_heartbeat: bool = False  # its switch followed hangup_at and events, no heartbeats
    gate_cost: int | None = None  # cost_micros of the end answer
    gate_leak_s: int = 0
    # A lost end (the switch hung up and never sent it): `duration` is what Gate billed, once
    # the harness learnt it (sync answer or GET /v1/calls/{id}) and checked it against:
    lost: bool = False
    true_duration: int = 0  # seconds the call really lasted, by the switch's clock
    answer_ms: float = 0.0  # when the start answer came back: Gate answered in between
    evidence_lo_ms: float = 0.0  # the last evidence Gate got (start, heartbeat, sync)
    evidence_hi_ms: float = 0.0  # landed between these two moments
    ended_by: str = ""  # sync | stale (Gate's flag lost_end | stale); "" while unresolved

    @property
    def cost(self) -> int:
        return self.price.cost(self.duration)

    @property
    def evidence_s(self) -> tuple[int, int]:
        """The least and most whole seconds from Gate's answer to its last evidence."""
        lo = int((self.evidence_lo_ms - self.answer_ms) // 1000)
        hi = int((self.evidence_hi_ms - self.t_send_ms) // 1000)
        return max(lo, 0), max(hi, 0)


@dataclass
class LostEnds:
    """How Gate ended the calls whose end was lost, against what the switch knows of them."""

    count: int = 0
    by: dict[str, int] = field(default_factory=dict)  # sync | stale | unresolved
    max_over_s: int | None = None  # most seconds billed beyond the true duration
    max_over_micros: int | None = None
    max_under_s: int | None = None  # most seconds of a lost end not billed
    max_under_micros: int | None = None
    problems: list[str] = field(default_factory=list)

    def add(self, e: CallEntry, tick_s: int, sync_s: float) -> None:
        """Check one lost end: a sync bills the last evidence plus one tick (issue 21), never
        more, and at least the last evidence, so true - billed <= sync interval + 1 s; a stale
        sweep bills the last evidence plus one tick (docs/design.md §4), never more."""
        self.count += 1
        how = e.ended_by or "unresolved"
        self.by[how] = self.by.get(how, 0) + 1
        if how == "unresolved":
            self.problems.append(f"lost end {e.call_id}: Gate never ended it")
            return
        billed, true = e.duration, e.true_duration
        over, under = billed - true, true - billed
        over_micros = e.price.cost(billed) - e.price.cost(true)
        under_micros = -over_micros
        self.max_over_s = over if self.max_over_s is None else max(self.max_over_s, over)
        self.max_under_s = under if self.max_under_s is None else max(self.max_under_s, under)
        self.max_over_micros = (
            over_micros if self.max_over_micros is None else max(self.max_over_micros, over_micros)
        )
        self.max_under_micros = (
            under_micros
            if self.max_under_micros is None
            else max(self.max_under_micros, under_micros)
        )
        lo, hi = e.evidence_s
        if how == "sync":
            if billed > hi + tick_s:
                self.problems.append(
                    f"lost end {e.call_id}: billed {billed} s, more than the evidence shows "
                    f"({hi} s) plus one tick ({tick_s} s)"
                )
            elif billed < min(lo, true):
                self.problems.append(
                    f"lost end {e.call_id}: billed {billed} s, less than the evidence ({lo} s)"
                )
            elif under > sync_s + 1:
                self.problems.append(
                    f"lost end {e.call_id}: {under} s not billed, above --sync-s + 1 s"
                )
        elif how == "stale":
            if billed > hi + tick_s:
                self.problems.append(
                    f"lost end {e.call_id}: swept stale at {billed} s, beyond the last "
                    f"evidence ({hi} s) plus one tick ({tick_s} s)"
                )
            elif billed < min(lo + tick_s, true):
                self.problems.append(
                    f"lost end {e.call_id}: swept stale at {billed} s, below the last "
                    f"evidence ({lo} s) plus one tick"
                )
        else:
            self.problems.append(f"lost end {e.call_id}: ended by Gate as {how!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "by": dict(sorted(self.by.items())),
            "max_over_s": self.max_over_s,
            "max_over_micros": self.max_over_micros,
            "max_under_s": self.max_under_s,
            "max_under_micros": self.max_under_micros,
            "problems": self.problems[:20],
            "problem_count": len(self.problems),
        }


@dataclass
class ChargeEntry:
    """One SMS charge Gate accepted (201): its segments as the harness counts them."""

    charge_id: str
    segments: int
    unit: int  # micros per segment

    @property
    def cost(self) -> int:
        return self.segments * self.unit

    def money(self, allowance_units: int) -> int:
        """What is left to pay in money once the allowance covered some segments."""
        return (self.segments - allowance_units) * self.unit


@dataclass
class WsBooks:
    """What one workspace's wallet must hold, by the harness's own account."""

    id: str
    admin_key: str
    switch_key: str
    grace_s: int
    opening: int = 0
    opening_rows: set[str] = field(default_factory=set)
    credits: dict[str, int] = field(default_factory=dict)  # ledger row id -> micros
    calls: dict[str, CallEntry] = field(default_factory=dict)
    charges: dict[str, ChargeEntry] = field(default_factory=dict)
    plan_buckets: dict[str, dict[str, Any]] = field(default_factory=dict)  # as assigned

    def credit(self, row_id: str, amount: int) -> None:
        self.credits[row_id] = amount

    def end(self, entry: CallEntry) -> None:
        self.calls[entry.call_id] = entry

    @property
    def expected_balance(self) -> int:
        """Before plans: every call and charge at its full price from universal money."""
        spent = sum(e.cost for e in self.calls.values())
        spent += sum(c.cost for c in self.charges.values())
        return self.opening + sum(self.credits.values()) - spent


@dataclass
class Exposure:
    """How far past its money a call went, and why that is allowed (docs/design.md §11.4)."""

    leak_s: int = 0
    leak_micros: int = 0
    allowed_micros: int = 0  # grace time, leakage and unauthorized calls: may go below zero
    gate_only_leak_s: int = 0  # leak Gate reported where the harness saw no cut or limit


def exposure(e: CallEntry, grace_s: int, receiver: Receiver, workspace_id: str) -> Exposure:
    out = Exposure()
    if e.how == "unknown":
        out.allowed_micros = e.cost
        return out
    inbound = e.direction == "inbound"
    key = (workspace_id, e.call_id)
    cut = receiver.cuts.get(key)
    granted: int | None = None  # seconds Gate let the call last, grace included
    if cut is not None and cut.reason != "stale":
        # cut_at = Gate's answer time + granted; Gate answered within a second of our send.
        granted = (cut.cut_at_ms - e.t_send_ms) // 1000
    elif receiver.limits.get(key):
        granted = receiver.limit_at(workspace_id, e.call_id, e.end_sent_ms)
    else:
        granted = e.start_limit
    p = e.price
    if granted is not None:
        paid = max(granted - (grace_s if inbound else 0), 0)
        if e.duration > granted:
            out.leak_s = e.duration - granted
            out.leak_micros = p.cost(e.duration) - p.cost(granted)
        if e.duration > paid:
            out.allowed_micros = p.cost(e.duration) - p.cost(paid)
    if e.gate_leak_s > out.leak_s:
        if out.leak_s == 0:
            out.gate_only_leak_s = e.gate_leak_s
        past = p.cost(e.duration) - p.cost(max(e.duration - e.gate_leak_s, 0))
        out.allowed_micros = max(out.allowed_micros, past)
    return out


def _row_key(row_id: str) -> tuple[int, int]:
    ms, _, n = row_id.partition("-")
    return int(ms), int(n or 0)


@dataclass
class WsCheck:
    """The reconciliation of one workspace."""

    workspace_id: str
    expected_balance: int
    balance: int
    reserved: int
    live_calls: int
    ledger_sum: int
    rows: int
    calls: int
    mismatched_micros: int = 0
    problems: list[str] = field(default_factory=list)
    overspend_micros: int = 0
    leakage_micros: int = 0
    leakage_s: int = 0
    gate_only_leak_s: int = 0
    allowed_negative_micros: int = 0
    min_balance: int = 0
    auto_recharges: int = 0
    auto_recharged_micros: int = 0

    def problem(self, micros: int, text: str) -> None:
        self.mismatched_micros += abs(micros)
        self.problems.append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "ok": not self.problems,
            "expected_balance_micros": self.expected_balance,
            "balance_micros": self.balance,
            "reserved_micros": self.reserved,
            "live_calls": self.live_calls,
            "ledger_sum_micros": self.ledger_sum,
            "ledger_rows": self.rows,
            "calls": self.calls,
            "mismatched_micros": self.mismatched_micros,
            "overspend_micros": self.overspend_micros,
            "leakage_micros": self.leakage_micros,
            "min_balance_micros": self.min_balance,
            "allowed_negative_micros": self.allowed_negative_micros,
            "auto_recharges": self.auto_recharges,
            "auto_recharged_micros": self.auto_recharged_micros,
            "problems": self.problems[:20],
            "problem_count": len(self.problems),
        }


class _Draws:
    """What the usage rows drew from the plan buckets, each row checked against the books'
    own price for what it says the allowance covered (docs/design.md §8)."""

    def __init__(self) -> None:
        self.allowance: dict[str, int] = {}
        self.commitment: dict[str, int] = {}
        self.plan_paid = 0  # micros of full price paid by allowances and commitments

    def want(
        self, row: dict[str, Any], service: str, full: int, money_of: Callable[[int], int]
    ) -> int:
        """The row's amount the books expect: -(money for the uncovered part - commitment)."""
        units = int(row.get("allowance_units") or 0)
        prior = int(row.get("allowance_prior_units") or 0)
        committed = int(row.get("commitment_micros") or 0)
        money = money_of(units + prior)
        self.allowance[service] = self.allowance.get(service, 0) + units
        if row.get("commitment"):
            name = str(row["commitment"])
            self.commitment[name] = self.commitment.get(name, 0) + committed
        self.plan_paid += full - (money - committed)
        return -(money - committed)

    def problems(self, held: dict[str, Any], assigned: dict[str, Any]) -> list[tuple[int, str]]:
        """Each bucket's committed - available = what its rows drew; committed as assigned."""
        out: list[tuple[int, str]] = []
        for name, b in held.items():
            if b["type"] == "universal":
                continue
            first = assigned.get(name, {})
            if b["type"] == "plan_allowance":
                total, left = int(b["committed_units"]), int(b["available_units"])
                drawn = self.allowance.get(name, 0)
                if total != int(first.get("committed_units", -1)):
                    out.append((0, f"allowance {name}: committed {total} != as assigned"))
            else:
                total = int(b["committed_micros"])
                left = int(b["available_micros"]) + int(b["reserved_micros"])
                drawn = self.commitment.get(name, 0)
                if total != int(first.get("committed_micros", -1)):
                    out.append((0, f"commitment {name}: committed {total} != as assigned"))
            if total - left != drawn:
                out.append((total - left - drawn,
                            f"bucket {name}: committed {total} - available {left} != rows "
                            f"{drawn}"))  # fmt: skip
        return out


def reconcile(
    books: WsBooks,
    wallet: dict[str, Any],
    rows: list[dict[str, Any]],
    receiver: Receiver,
    held: dict[str, Any] | None = None,
) -> WsCheck:
    """Check one workspace's wallet and whole ledger against the books, to the micro.

    The books hold the opening ledger rows seen before any traffic, every credit the harness
    made (by the ledger row id of its answer) and every call it ended, priced by
    loadtest.pricing. Checked: the balance equals the books; the ledger sums to the balance
    and each balance_after is the running sum; each call row is exactly -cost(duration) and
    each credit row its amount; nothing is missing or extra; nothing is left reserved.
    """
    balance = int(wallet["balance_micros"])
    # Auto-recharges are Gate's own credits: each must be a positive whole-cent amount,
    # credited once per payment, and they join the books.
    auto: dict[str, int] = {}
    payments: set[str] = set()
    for row in rows:
        if row["type"] == "recharge" and row.get("source") == "auto_recharge":
            auto[str(row["id"])] = int(row["amount_micros"])
            ref = str(row.get("reference") or "")
            if ref in payments:
                auto[str(row["id"])] = 0  # reported below as unexpected
            payments.add(ref)
    draws = _Draws()
    check = WsCheck(
        workspace_id=books.id,
        expected_balance=books.expected_balance + sum(auto.values()),
        balance=balance,
        reserved=int(wallet["reserved_micros"]),
        live_calls=int(wallet.get("live_calls") or 0),
        ledger_sum=sum(int(r["amount_micros"]) for r in rows),
        rows=len(rows),
        calls=len(books.calls),
    )
    if check.ledger_sum != balance:
        check.problem(check.ledger_sum - balance, f"ledger sum {check.ledger_sum} != {balance}")
    if check.reserved != 0:
        check.problem(check.reserved, f"{check.reserved} micros still reserved after every end")
    if check.live_calls:
        check.problems.append(f"{check.live_calls} calls still live after every end")

    running = 0
    lowest = 0
    seen_calls: set[str] = set()
    for row in sorted(rows, key=lambda r: _row_key(str(r["id"]))):
        row_id, amount = str(row["id"]), int(row["amount_micros"])
        running += amount
        after = int(row["balance_after_micros"])
        if after != running:
            check.problem(after - running, f"row {row_id}: balance_after {after} != {running}")
            running = after  # report each break once, not every row after it
        lowest = min(lowest, after)
        if row_id in books.opening_rows:
            continue
        if auto.get(row_id, 0) > 0 and amount % 10_000 == 0:
            check.auto_recharges += 1
            check.auto_recharged_micros += amount
            continue
        if row_id in books.credits:
            want = books.credits[row_id]
            if amount != want:
                check.problem(amount - want, f"credit row {row_id}: {amount} != {want}")
            continue
        ref = str(row.get("reference") or "")
        if row["type"] in CALL_ROW_TYPES and ref in books.calls:
            if ref in seen_calls:
                check.problem(amount, f"call {ref} billed twice (row {row_id})")
                continue
            seen_calls.add(ref)
            entry = books.calls[ref]
            flag = str(row.get("flag") or "")
            want_flag = {"sync": "lost_end", "stale": "stale"}.get(entry.ended_by, "")
            if (flag in ("lost_end", "stale") or want_flag) and flag != want_flag:
                why = f"lost ({want_flag or 'unresolved'})" if entry.lost else "sent"
                check.problems.append(f"call {ref}: row flag {flag or 'none'!r}, end {why}")
            want = -entry.cost
            if "allowance_units" in row or row.get("commitment"):
                svc = "voice" if row["type"] == "call" else "ai_agent"
                want = draws.want(row, svc, entry.cost, partial(entry.price.cost, entry.duration))
            if amount != want:
                check.problem(
                    amount - want,
                    f"call {ref}: row {amount} != -cost({books.calls[ref].duration} s) {want}",
                )
            continue
        if row["type"] == "sms" and ref in books.charges:
            if ref in seen_calls:
                check.problem(amount, f"charge {ref} billed twice (row {row_id})")
                continue
            seen_calls.add(ref)
            charge = books.charges[ref]
            if int(row.get("segments") or 0) != charge.segments:
                check.problems.append(f"charge {ref}: {row.get('segments')} segments, books "
                                      f"{charge.segments}")  # fmt: skip
            want = -charge.cost
            if "allowance_units" in row or row.get("commitment"):
                want = draws.want(row, "sms", charge.cost, charge.money)
            if amount != want:
                check.problem(amount - want, f"charge {ref}: row {amount} != {want}")
            continue
        check.problem(amount, f"unexpected {row['type']} row {row_id} ({amount}, ref {ref!r})")
    check.expected_balance += draws.plan_paid
    if balance != check.expected_balance:
        check.problem(
            balance - check.expected_balance,
            f"balance {balance} != books {check.expected_balance}",
        )
    if held is not None:
        for micros_off, text in draws.problems(held, books.plan_buckets):
            check.problem(micros_off, text)
    have = {str(r["id"]) for r in rows}
    for row_id, amount in books.credits.items():
        if row_id not in have:
            check.problem(amount, f"credit row {row_id} ({amount}) is not in the ledger")
    for call_id, entry in books.calls.items():
        if call_id not in seen_calls:
            check.problem(entry.cost, f"call {call_id} ({entry.cost}) has no ledger row")
    for charge_id, charge in books.charges.items():
        if charge_id not in seen_calls:
            check.problem(charge.cost, f"charge {charge_id} ({charge.cost}) has no ledger row")

    allowed = 0
    for entry in books.calls.values():
        exp = exposure(entry, books.grace_s, receiver, books.id)
        check.leakage_micros += exp.leak_micros
        check.leakage_s += exp.leak_s
        check.gate_only_leak_s += exp.gate_only_leak_s
        allowed += exp.allowed_micros
    check.allowed_negative_micros = allowed
    check.min_balance = lowest
    check.overspend_micros = max(0, -lowest - allowed)
    return check

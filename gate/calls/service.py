"""Live calls: the start decision, answer, heartbeats, end, and the live view.

Each operation is one Lua script run (one Redis round trip); this module rates the call,
shapes the script's arguments and turns its reply into the answer the switch reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from gate import metrics
from gate.calls.rating import (
    Increment,
    NoRate,
    Rate,
    RateCard,
    RateCardError,
    billable_seconds,
    cost_micros,
    load_rate_card,
)
from gate.context import Context
from gate.errors import (
    GateTimeout,
    HeldByPlatform,
    InsufficientBalance,
    InvalidState,
    NoRateFound,
    NotFound,
    TooManyRequests,
    ValidationFailed,
    WorkspaceSuspended,
)
from gate.history import replay
from gate.money import usd
from gate.store import keys
from gate.store.redis_client import as_bytes
from gate.store.redis_client import text as text_of
from gate.store.scripts import Code

log = logging.getLogger("gate.calls.service")
_undoing: set[asyncio.Future[None]] = set()  # keeps the background undo tasks alive


async def undos_done() -> None:
    """Wait for the undos of timed-out starts under way (tests and a draining shutdown)."""
    while _undoing:
        await asyncio.gather(*_undoing, return_exceptions=True)


class Record(msgspec.Struct, frozen=True):
    """A live call as lua/_call.lua keeps it (short names: it is stored per call)."""

    id: str
    dir: str
    svc: str
    from_: str = msgspec.field(name="from")
    to: str = ""
    user: str = ""
    grp: str = ""
    nt: str = ""
    rate: int = 0
    fee: int = 0
    f: int = 60
    n: int = 1
    buf: int = 60
    tk: int = 10
    grace: int = 0
    max: int = 14400
    t0: int = 0
    ans: int = 0
    bs: int = 0
    hz: int = 0
    held: int = 0
    cut: int = 0
    lim: int = 0
    cs: int = 0
    hseq: int = 0
    hms: int = 0
    r0: int = 0
    g0: int = 0
    m0: int = -1
    b0: int = 0
    a0: int = 0
    an0: int = 0
    h0: int = 0
    ring_timeout_s: int = msgspec.field(default=0, name="ring")
    evidence_ms: int = msgspec.field(default=0, name="evm")
    reports_liveness: int = msgspec.field(default=0, name="rep")
    told_hangup_ms: int = msgspec.field(default=0, name="ha")
    elapsed_clamped: int = msgspec.field(default=0, name="clp")
    # Under a plan (lua/_plan.lua): allowance seconds held in this cycle and used in earlier
    # ones, elapsed seconds at the last cycle boundary, commitment micros held.
    allowance_s: int | None = msgspec.field(default=None, name="aw")
    prior_allowance_s: int = msgspec.field(default=0, name="ao")
    boundary_s: int = msgspec.field(default=0, name="bs0")
    commitment_held: int = msgspec.field(default=0, name="ch")

    @property
    def max_duration_s(self) -> int | None:
        if self.cut == 0:
            return None
        return self.hz + (self.grace if self.dir == "inbound" else 0)

    @property
    def hangup_at_ms(self) -> int:
        """The latest moment the money granted so far lasts."""
        if self.cut:
            return self.cut
        return (self.ans or self.t0) + self.hz * 1000

    def cost(self, elapsed_s: int) -> int:
        """Money for `elapsed_s` seconds: the card's cost, less what the allowance covers."""
        inc = Increment(self.f, self.n)
        covered = 0
        if self.allowance_s is not None:
            billable = billable_seconds(elapsed_s, inc)
            covered = self.prior_allowance_s + min(
                self.allowance_s, max(billable - self.boundary_s, 0)
            )
        return cost_micros(self.rate, self.fee, inc, elapsed_s, covered_s=covered)


class Ended(msgspec.Struct, frozen=True):
    """What call_end recorded for a finished call."""

    cost: int
    row: str
    balance: int
    duration: int
    leak: int = 0
    flag: str = ""
    clamped: int = 0
    parts: list[str | int] | dict[str, Any] = msgspec.field(default_factory=list)
    plan: int = msgspec.field(default=0, name="pl")  # 1: the call drew from plan buckets
    allowance_s: int = msgspec.field(default=0, name="al")  # this cycle's allowance used
    prior_allowance_s: int = msgspec.field(default=0, name="alp")  # earlier cycles'
    commitment_micros: int = msgspec.field(default=0, name="cm")
    raised: int = msgspec.field(default=0, name="rz")  # 1: billed the heartbeats' time

    def components(self) -> dict[str, int]:
        """The cost by the rate's components, micros (empty for a one-part rate)."""
        if not isinstance(self.parts, list):
            return {}
        names, values = self.parts[0::2], self.parts[1::2]
        return {
            str(n).removeprefix("component_").removesuffix("_micros"): int(v)
            for n, v in zip(names, values, strict=True)
        }


_record = msgspec.msgpack.Decoder(Record)
_ended = msgspec.msgpack.Decoder(Ended)


def _first_due(rec: Record, now_ms: int) -> int:
    """When the ticker must next look at a call the script just scheduled (its next_due)."""
    if not rec.ans:
        return rec.t0 + (rec.ring_timeout_s or rec.max) * 1000
    due = now_ms + rec.tk * 1000
    if rec.cut and not rec.cs:
        due = min(due, rec.cut)
    return min(due, rec.ans + rec.max * 1000)


def _components(rate: Rate) -> str:
    """A rate's parts as call_start and call_end take them: "name=micros per minute;..."."""
    if len(rate.components) < 2:
        return ""
    return ";".join(f"{name}={micros}" for name, micros in rate.components.items())


def _seconds(ms: int) -> int:
    return ms // 1000


class RateBook:
    """The current rate card; reloaded in place (SIGHUP, admin API), live calls keep theirs."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.card: RateCard = load_rate_card(path)

    def reload(self) -> RateCard:
        """Load the card again; on error keep the old one and raise RateCardError."""
        card = load_rate_card(self.path)
        self.card = card
        log.info("rate card reloaded from %s: %d rates", self.path or "defaults", len(card.rates))
        return card

    def typical_per_min_micros(self) -> int | None:
        """The rate a wallet's "minutes left" is estimated at: outbound voice to any number."""
        try:
            return self.card.match("voice", "outbound", "", "any").per_min_micros or None
        except NoRate:
            return None

    def typical_rates(self) -> dict[str, int | None]:
        """Per service, the rate minutes left are estimated at: an outbound call to any number."""
        out: dict[str, int | None] = {}
        for service in ("voice", "ai_agent"):
            try:
                out[service] = self.card.match(service, "outbound", "", "any").per_min_micros
            except NoRate:
                out[service] = None
        return out

    @property
    def source(self) -> str:
        return str(Path(self.path).resolve()) if self.path else "built-in default card"


@dataclass(frozen=True, slots=True)
class StartParams:
    call_id: str
    direction: str
    from_: str
    to: str
    service: str
    user: str | None
    group: str | None
    number_type: str | None
    answered: bool
    timeout_ms: int | None = None
    heartbeat_s: int | None = None
    node: str | None = None  # the switch node carrying it (node-scoped sync)


class Calls:
    def __init__(self, ctx: Context, rates: RateBook) -> None:
        self.ctx = ctx
        self.rates = rates
        # The operator's GATE_SWITCH_WEBHOOK_URL or GATE_EVENTS_WEBHOOK_URL: every
        # workspace's events have somewhere to go, whatever its own URL.
        s = ctx.settings
        self._operator_destination = bool(s.switch_webhook_url or s.events_webhook_url)

    def _match(
        self, service: str, direction: str, from_: str, to: str
    ) -> tuple[Rate | None, str | None, str]:
        """The card's rate for a call (None: no rate matches), the card's type of the dialled
        number (an inbound toll-free call is one to our toll-free number; None: unclassified),
        and the far end the rate was matched on."""
        card = self.rates.card
        nt = card.number_type_of(to)
        far_end = to if direction == "outbound" else from_
        try:
            return card.match(service, direction, far_end, nt or "any"), nt, far_end
        except NoRate:
            return None, nt, far_end

    def _rate_args(
        self, service: str, direction: str, from_: str, to: str, claimed: str | None
    ) -> tuple[Rate, str]:
        """The call's rate and number type. The type is the rate card's to derive from the
        dialled number, never the switch's to choose: a claimed type that differs is refused,
        not believed."""
        rate, nt, far_end = self._match(service, direction, from_, to)
        if claimed is not None and claimed != nt:
            raise ValidationFailed(
                f"number_type is derived from the number by the rate card, not taken from the "
                f"switch: the card makes {to} {nt or 'an unclassified number (any)'}; drop "
                "number_type, or list the number's prefix under [[number_types]] in the card",
                field="number_type",
                number_type=nt,
            )
        if rate is None:
            way = "to" if direction == "outbound" else "from"
            raise NoRateFound(
                f"no rate in the rate card for {service} {direction} calls {way} {far_end}; "
                'add one to the card (a prefix "" rate matches every number) and reload it',
                number=far_end,
                direction=direction,
                service=service,
            )
        return rate, nt or rate.number_type

    async def start(
        self,
        workspace_id: str,
        p: StartParams,
        deadline_ms: int = 0,
        expires_at: float | None = None,
    ) -> tuple[bool, dict[str, Any]]:
        """Decide and hold; returns (new?, answer). Raises the refusals as GateErrors.

        `deadline_ms` (wall-clock unix ms, 0 = none) is when the switch stops waiting: the
        script refuses to commit after it by Redis's own clock, so a start stuck behind a
        paused Redis can never become a call the switch does not know about. `expires_at`
        (event-loop time) is when Gate stops waiting for the script's reply: then it answers
        GateTimeout and undoes the start in the background, in case the script ran in time
        but its reply came too late.
        """
        s = self.ctx.settings
        rate, nt = self._rate_args(p.service, p.direction, p.from_, p.to, p.number_type)
        k = keys.for_workspace(workspace_id)
        now = self.ctx.clock.now_ms()
        call = self.ctx.scripts.submit(
            "call_start",
            k.call_keys,
            [
                now,
                p.call_id,
                p.direction,
                p.service,
                p.from_,
                p.to,
                p.user or "",
                p.group or "",
                nt,
                rate.per_min_micros,
                rate.connect_fee_micros,
                rate.increment.first,
                rate.increment.next,
                s.buffer_s,
                s.tick_s,
                s.inbound_grace_s,
                s.max_call_s,
                1 if p.answered else 0,
                deadline_ms,
                s.inbound_grace_max_s,
                s.max_concurrent_calls_max,
                s.ring_timeout_s,
                _components(rate),
                0 if p.heartbeat_s is None else 1,
                p.node or "",
                s.negative_limit_micros,
            ],
        )
        try:
            async with asyncio.timeout_at(expires_at):
                reply = await asyncio.shield(call)
        except TimeoutError:
            metrics.START_TIMEOUTS.inc()
            self._undo_if_committed(workspace_id, call)
            raise GateTimeout(
                f"call {p.call_id} was not decided within its timeout and will not be "
                "committed; fail the call by direction (outbound closed, inbound may open) and "
                "send its end: duration_s 0 if it did not go ahead",
                call_id=p.call_id,
            ) from None
        code = reply[0]
        if code == Code.DEADLINE:
            metrics.START_TIMEOUTS.inc()
            raise GateTimeout(
                f"call {p.call_id} reached Redis {int(reply[1])} ms after its deadline and was "
                "not started; the switch treats this as a failed start (see the failure policy)",
                call_id=p.call_id,
            )
        if code in (Code.OK, Code.REPEAT):
            rec = _record.decode(as_bytes(reply[1]))
            if code == Code.OK:
                self.ctx.notifier.ticks(workspace_id, _first_due(rec, now))
                # The hold may have crossed the auto-recharge threshold: wake the worker now,
                # not at its next rescan (one int read when nothing fired).
                if rec.cut or int(reply[4]):
                    self.ctx.notifier.events(workspace_id)
            return code == Code.OK, self.first_answer(rec)
        if code == Code.INSUFFICIENT:
            balance, reserved, needed = int(reply[1]), int(reply[2]), int(reply[3])
            raise InsufficientBalance(
                "Wallet balance below minimum to start call",
                balance_usd=usd(balance),
                required_usd=usd(needed),
                available_usd=usd(balance - reserved),
            )
        if code == Code.CONCURRENCY_LIMIT:
            raise TooManyRequests(
                f"the workspace already has {int(reply[1])} live calls, its limit is "
                f"{int(reply[2])}; end a call or raise max_concurrent_calls",
                live_calls=int(reply[1]),
                max_concurrent_calls=int(reply[2]),
            )
        if code == Code.SUSPENDED:
            self.ctx.notifier.events(workspace_id)
            balance, reserved = int(reply[1]), int(reply[2])
            raise WorkspaceSuspended(
                "the workspace is suspended: its balance stayed at or below zero past the "
                "grace period, or nothing is available and its live calls' grace already "
                "reaches its negative limit; top up to resume calls",
                balance_usd=usd(balance),
                available_usd=usd(balance - reserved),
            )
        if code == Code.ENDED:
            raise InvalidState(f"call {p.call_id} has ended; use a new call_id for a new call")
        if code == Code.HELD:
            raise HeldByPlatform(text_of(reply[1]), text_of(reply[2]))
        raise NotFound("no such workspace")

    def _undo_if_committed(self, workspace_id: str, call: asyncio.Future[list[Any]]) -> None:
        """Gate gave up waiting for a start's reply: when it comes, and says the start
        committed (it ran in time but answered too late), remove that call again. Waiting for
        the reply keeps the undo behind the start in Redis's order."""

        async def undo() -> None:
            k = keys.for_workspace(workspace_id)
            try:
                started = await call
                if started[0] != Code.OK:
                    return  # refused, or past its deadline: nothing was committed
                rec = _record.decode(as_bytes(started[1]))
                reply = await self.ctx.scripts.call(
                    "call_abort", k.call_keys, [self.ctx.clock.now_ms(), rec.id, rec.t0]
                )
            except Exception as err:  # no reply: the start's own deadline keeps it out
                log.warning("could not check a timed-out start of %s: %s", workspace_id, err)
                return
            call_id = rec.id
            if reply[0] == Code.OK:
                log.warning("undid call %s of %s: its start committed after Gate gave up",
                            call_id, workspace_id)  # fmt: skip
                if int(reply[1]):
                    self.ctx.notifier.ticks(workspace_id, self.ctx.clock.now_ms())

        task = asyncio.ensure_future(undo())
        _undoing.add(task)
        task.add_done_callback(_undoing.discard)

    def first_answer(self, rec: Record) -> dict[str, Any]:
        """The start answer, rebuilt the same from the record on every repeat."""
        return {
            "call_id": rec.id,
            "decision": "allow",
            "direction": rec.dir,
            "service": rec.svc,
            "rate_per_min_usd": usd(rec.rate),
            "rate_per_min_micros": rec.rate,
            "increment": f"{rec.f}/{rec.n}",
            "connect_fee_usd": usd(rec.fee),
            "reserved_usd": usd(rec.r0),
            "reserved_micros": rec.r0,
            "granted_s": rec.g0,
            "max_duration_s": None if rec.m0 < 0 else rec.m0,
            "hangup_at": _seconds(rec.h0),
            **self._relative(rec.h0),
            "tick_s": rec.tk,
            "number_type": rec.nt or None,
            "answered": rec.an0 == 1,
            "balance_usd": usd(rec.b0),
            "available_usd": usd(rec.a0),
        }

    def _interim(self, rec: Record, balance: int, hangup: bool) -> dict[str, Any]:
        return {
            "call_id": rec.id,
            "action": "hangup" if hangup else "continue",
            "granted_s": rec.hz,
            "max_duration_s": rec.max_duration_s,
            "hangup_at": _seconds(rec.hangup_at_ms),
            **self._relative(rec.hangup_at_ms),
            "billed_s": rec.bs,
            "balance_usd": usd(balance),
        }

    def _relative(self, hangup_at_ms: int) -> dict[str, int]:
        """hangup_at also as milliseconds: a switch script with 32-bit integers (Kamailio)
        cannot hold epoch milliseconds, and a relative time needs no synchronised clock."""
        return {
            "hangup_at_ms": hangup_at_ms,
            "hangup_in_ms": max(hangup_at_ms - self.ctx.clock.now_ms(), 0),
        }

    async def answer(self, workspace_id: str, call_id: str) -> dict[str, Any]:
        k = keys.for_workspace(workspace_id)
        now = self.ctx.clock.now_ms()
        reply = await self.ctx.scripts.call("call_answer", k.call_keys, [now, call_id])
        code = reply[0]
        if code == Code.NOT_FOUND:
            raise NotFound(f"no call {call_id}; start it with POST /v1/calls")
        if code == Code.ENDED:
            raise InvalidState(f"call {call_id} has ended")
        rec = _record.decode(as_bytes(reply[1]))
        if code == Code.OK:
            self.ctx.notifier.ticks(workspace_id, _first_due(rec, now))
            if rec.cut:
                self.ctx.notifier.events(workspace_id)
        return self._interim(rec, int(reply[2]), False)

    async def heartbeat(
        self, workspace_id: str, call_id: str, elapsed_s: int, seq: int
    ) -> dict[str, Any]:
        k = keys.for_workspace(workspace_id)
        now = self.ctx.clock.now_ms()
        reply = await self.ctx.scripts.call(
            "call_heartbeat",
            k.call_keys,
            [now, call_id, elapsed_s, seq, self.ctx.settings.clock_tolerance_s],
        )
        code = reply[0]
        if code == Code.NOT_FOUND:
            raise NotFound(f"no call {call_id}; start it with POST /v1/calls")
        if code == Code.ENDED:
            ended = _ended.decode(as_bytes(reply[1]))
            return {
                "call_id": call_id,
                "action": "hangup",
                "granted_s": ended.duration,
                "max_duration_s": None,
                "hangup_at": _seconds(now),
                "hangup_at_ms": now,
                "hangup_in_ms": 0,
                "billed_s": ended.duration,
                "balance_usd": usd(ended.balance),
            }
        rec = _record.decode(as_bytes(reply[1]))
        answer = self._interim(rec, int(reply[2]), bool(int(reply[3])))
        if code == Code.OK:
            self.ctx.notifier.ticks(workspace_id, _first_due(rec, now))
            if rec.cut:
                self.ctx.notifier.events(workspace_id)
            if int(reply[4]):
                metrics.CLAMPS.labels("heartbeat").inc()
                answer["elapsed_clamped"] = True
        return answer

    async def end(
        self,
        workspace_id: str,
        call_id: str,
        duration_s: int,
        cause: str | None,
        fallback: StartParams,
        facts: Sequence[tuple[str, str]] = (),
    ) -> tuple[bool, dict[str, Any]]:
        """Bill the whole call; returns (new?, result). Unknown calls are billed anyway.

        `facts` are what the switch said of the call (quality, an AI agent's skills...): they
        go into its ledger row as they are, never into what it costs.

        A known call ends in one round trip; only a call the gate never saw needs a second,
        carrying how to rate it.
        """
        k = keys.for_workspace(workspace_id)
        s = self.ctx.settings
        args: list[str | int] = [
            self.ctx.clock.now_ms(),
            call_id,
            duration_s,
            cause or "",
            s.clock_tolerance_s,
            s.max_call_s,
            "\t".join(part for pair in facts for part in pair),
        ]
        reply = await self.ctx.scripts.call("call_end", k.call_keys, args)
        if reply[0] == Code.NOT_FOUND and (
            first := await replay.call_end(self.ctx, workspace_id, call_id)
        ):  # ended before Redis forgot it: the archive has its first result
            return False, self.ended_answer(call_id, Ended(**first))
        if reply[0] == Code.NOT_FOUND:
            args[0] = self.ctx.clock.now_ms()
            args += self._unseen_call_args(fallback)
            reply = await self.ctx.scripts.call("call_end", k.call_keys, args)
        code = reply[0]
        if code == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        ended = _ended.decode(as_bytes(reply[1]))
        if code == Code.OK:
            # Only the workers with work: the outbox when the events have a webhook to go
            # to (url -1: the script did not read it), the automation worker when the
            # wallet's watch fired (lua/call_end-9.lua's reply {0, result, woken, fired, url}).
            self.ctx.notifier.events(
                workspace_id,
                outbox=int(reply[4]) != 0 or self._operator_destination,
                automation=int(reply[3]) != 0,
            )
            if int(reply[2]):
                self.ctx.notifier.ticks(workspace_id, self.ctx.clock.now_ms())
            if ended.flag == "unauthorized_call":
                log.warning("call %s of %s ended unseen: billed as unauthorized", call_id,
                            workspace_id)  # fmt: skip
            if ended.clamped:
                metrics.CLAMPS.labels("end").inc()
        return code == Code.OK, self.ended_answer(call_id, ended)

    def _unseen_call_args(self, p: StartParams) -> list[str | int]:
        """How call_end rates a call the gate never saw. Usage is never lost: with no rate on
        the card it is recorded at zero, flagged no_rate for review; the switch's number_type
        is not believed here either (the card's derived type prices it)."""
        rate, nt, _ = self._match(p.service, p.direction, p.from_, p.to)
        who = [p.direction, p.service, p.from_, p.to, p.user or "", p.group or ""]
        if rate is None:
            log.warning("unseen call %s has no rate: recorded at zero, flagged no_rate", p.call_id)
            return [*who, 0, 0, 1, 1, nt or "any", 1, ""]
        return [*who, rate.per_min_micros, rate.connect_fee_micros, rate.increment.first,
                rate.increment.next, nt or rate.number_type, 0, _components(rate)]  # fmt: skip

    async def sync(
        self, workspace_id: str, call_ids: list[str], node: str | None = None
    ) -> dict[str, Any]:
        """The switch's list of the calls it has up: every other live call (older than
        sync_min_age_s) is ended as a lost end, billed to the last evidence it was up. With a
        node, only the calls started on that node are candidates (several switch nodes)."""
        k = keys.for_workspace(workspace_id)
        now = self.ctx.clock.now_ms()
        reply = await self.ctx.scripts.call(
            "call_sync", k.call_keys, [now, self.ctx.settings.sync_min_age_s, node or "", *call_ids]
        )
        if reply[0] == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        lost = [text_of(i) for i in reply[1]]
        ended = [_ended.decode(as_bytes(r)) for r in reply[2]]
        for one in ended:
            metrics.CALL_ENDINGS.labels(one.flag).inc()
        if ended:
            self.ctx.notifier.events(workspace_id)
            log.info("sync ended %d calls of %s the switch no longer has", len(ended),
                     workspace_id)  # fmt: skip
        if int(reply[4]):
            self.ctx.notifier.ticks(workspace_id, now)
        return {
            "ended": [self.ended_answer(i, e) for i, e in zip(lost, ended, strict=True)],
            "not_live": [text_of(i) for i in reply[3]],
            "listed": len(set(call_ids)),
        }

    @staticmethod
    def ended_answer(call_id: str, ended: Ended) -> dict[str, Any]:
        """The end answer; `cost_*` is money (commitment + universal), a plan call also says
        how much of its plan allowance and commitment it used."""
        plan: dict[str, Any] = {}
        if ended.plan:
            plan = {
                "allowance_used_s": ended.allowance_s + ended.prior_allowance_s,
                "commitment_micros": ended.commitment_micros,
                "universal_micros": ended.cost - ended.commitment_micros,
            }
        return plan | {
            "call_id": call_id,
            "state": "ended",
            "duration_s": ended.duration,
            "cost_usd": usd(ended.cost),
            "cost_micros": ended.cost,
            "transaction_id": ended.row or None,
            "balance_usd": usd(ended.balance),
            "balance_micros": ended.balance,
            "leakage_s": ended.leak,
            "unauthorized_call": ended.flag == "unauthorized_call",
            "stale": ended.flag == "stale",
            "lost_end": ended.flag == "lost_end",
            "duration_clamped": bool(ended.clamped),
            "duration_raised": bool(ended.raised),
            "flag": ended.flag or None,
            "components": {
                name: {"cost_usd": usd(micros), "cost_micros": micros}
                for name, micros in ended.components().items()
            },
        }

    def live_view(self, rec: Record) -> dict[str, Any]:
        now = self.ctx.clock.now_ms()
        elapsed = max(now - rec.ans, 0) // 1000 if rec.ans else 0
        return {
            "call_id": rec.id,
            "state": "live" if rec.ans else "pending",
            "direction": rec.dir,
            "service": rec.svc,
            "from": rec.from_,
            "to": rec.to,
            "user": rec.user or None,
            "group": rec.grp or None,
            "rate_per_min_usd": usd(rec.rate),
            "increment": f"{rec.f}/{rec.n}",
            "elapsed_s": elapsed,
            "billed_s": rec.bs,
            "cost_so_far_usd": usd(rec.cost(rec.bs)),
            "granted_s": rec.hz,
            "reserved_usd": usd(rec.held + rec.commitment_held),
            "reserved_micros": rec.held + rec.commitment_held,
            "max_duration_s": rec.max_duration_s,
            "hangup_at": _seconds(rec.hangup_at_ms),
            **self._relative(rec.hangup_at_ms),
            "cut_at": _seconds(rec.cut) if rec.cut else None,
            "cut_sent": bool(rec.cs),
        }

    async def get(self, workspace_id: str, call_id: str) -> dict[str, Any]:
        k = keys.for_workspace(workspace_id)
        async with self.ctx.client.pipeline(transaction=False) as pipe:
            pipe.hget(k.live, call_id)
            pipe.hget(k.ended, call_id)
            live, ended = await pipe.execute()
        if live is not None:
            return self.live_view(_record.decode(as_bytes(live)))
        if ended is not None:
            return self.ended_answer(call_id, _ended.decode(as_bytes(ended)))
        raise NotFound(f"no call {call_id}")

    async def live(self, workspace_id: str, limit: int) -> list[dict[str, Any]]:
        k = keys.for_workspace(workspace_id)
        views: list[dict[str, Any]] = []
        async for _, raw in self.ctx.client.hscan_iter(k.live, count=500):
            views.append(self.live_view(_record.decode(as_bytes(raw))))
            if len(views) >= limit:
                break
        return sorted(views, key=lambda v: v["call_id"])

    async def end_all(self, workspace_id: str, cause: str) -> list[dict[str, Any]]:
        """End every live call of the workspace now (the platform suspended or closed it):
        each is billed to this moment by the gate's clock and sent a call.cut; the switch's
        own end later bills any time it kept the call up after (lua/call_cut_all-9.lua)."""
        k = keys.for_workspace(workspace_id)
        reply = await self.ctx.scripts.call(
            "call_cut_all", k.call_keys, [self.ctx.clock.now_ms(), cause]
        )
        if reply[0] == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        ids = [text_of(i) for i in reply[1]]
        if ids:
            self.ctx.notifier.events(workspace_id)
        return [self.ended_answer(i, _ended.decode(as_bytes(r)))
                for i, r in zip(ids, reply[2], strict=True)]  # fmt: skip


__all__ = ["Calls", "RateBook", "RateCardError", "Record", "StartParams"]

"""A model-based test: random sequences of switch and wallet actions against a real Gate.

A hypothesis RuleBasedStateMachine starts calls (outbound and inbound, voice and AI agent, at
rates with and without a connect fee, 60/6, 1/1, 6/6 and 30/6 increments, and a free local
rate), answers them, sends heartbeats (with elapsed_s behind, on and beyond the gate's clock,
and repeated seqs), ends them (with durations beyond the gate's clock too), syncs the switch's
list of live calls, repeats starts and ends, tops up (and replays top-ups), adjusts, and moves
the clock (ticks, limits, cuts, ring timeouts, stale sweeps) against a Gate on a real Redis.
A pure-Python model (tests/model_books.py) follows docs/design.md §3 and §4 on its own. After every
step the gate's balance and reserved money must equal the model's to the micro, every live
call's billed seconds, horizon, hold, hangup time and cut must match, every finished call must
be billed exactly what the model says, and docs/design.md §11's invariants must hold (`gate check`).

Gate's background ticker is stopped: the machine runs its rounds itself right after each step
that can make calls due (a clock move, a credit, a released hold), as the background ticker
would, so that which call gets money first is decided by due order, not by scheduling.

The short form runs in CI; the long form is
`GATE_MODEL_EXAMPLES=500 GATE_MODEL_STEPS=60 .venv/bin/pytest -q tests/test_model.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from gate.api.http import TICKER
from gate.app import create_app
from gate.calls.rating import Rate, load_rate_card
from gate.clock import ManualClock
from gate.history.check import check_all
from gate.settings import Settings
from gate.store import keys
from gate.store.redis_client import entries, text
from gate.store.redis_proc import free_port
from tests.conftest import PLATFORM_KEY, Client, new_workspace
from tests.helpers import all_rows
from tests.model_books import Books, Config, Ended
from tests.test_calls import call, set_balance, switch_key, tick
from tests.test_calls import wallet as wallet_of

T = TypeVar("T")
EXAMPLES = int(os.environ.get("GATE_MODEL_EXAMPLES", "80"))
STEPS = int(os.environ.get("GATE_MODEL_STEPS", "40"))

# The test's own card: a connect fee, 60/6, 1/1, 6/6 and 30/6 increments, a free local rate.
CARD = """
currency = "USD"

[[number_types]]
prefix = "+1212"
type = "local"

[[rates]]
service = "voice"
direction = "outbound"
prefix = "+1"
components = { voice_base = "0.10", telephony = "0.05", recording = "0.05" }
increment = "60/6"

[[rates]]
service = "voice"
direction = "outbound"
prefix = "+44"
components = { voice_base = "0.30" }
connect_fee = "0.05"
increment = "1/1"

[[rates]]
service = "voice"
direction = "inbound"
prefix = ""
components = { telephony = "0.06" }
connect_fee = "0.01"
increment = "6/6"

[[rates]]
service = "voice"
direction = "any"
prefix = ""
number_type = "local"
components = { voice_base = "0" }
increment = "60/6"

[[rates]]
service = "ai_agent"
direction = "any"
prefix = ""
components = { ai_agent = "0.89" }
increment = "30/6"

[units]
sms_segment = "0.0079"
mms = "0.02"
fax_page = "0.07"
chat_message = "0.01"
number_rental_month = "1.15"
"""

US, UK, LOCAL, CALLER = "+15550002", "+447700900123", "+12125550100", "+15550001"
# (service, direction, from, to): the far end is `to` for outbound and `from` for inbound.
ROUTES = [
    ("voice", "outbound", CALLER, US),
    ("voice", "outbound", CALLER, UK),
    ("voice", "outbound", CALLER, LOCAL),
    ("voice", "inbound", CALLER, US),
    ("ai_agent", "outbound", CALLER, US),
    ("ai_agent", "inbound", CALLER, US),
]
TOLERANCE_S = 5


class Loop:
    """A Gate app served from an event loop on its own thread; the machine calls it over HTTP."""

    def __init__(self, settings: Settings, clock: ManualClock) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = free_port()
        self.app = create_app(settings, clock=clock)
        self.runner = web.AppRunner(self.app)
        self.run(self._start())
        self.redis = self.run(self._redis(settings))
        # The machine runs the ticker's rounds itself (see the module docstring).
        self.run(self.app[TICKER].stop())

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _redis(self, settings: Settings) -> Redis:
        return Redis.from_url(settings.redis_url or "")

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.run(self.redis.aclose())
        self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def http(
    port: int, method: str, path: str, key: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[tuple[Loop, ManualClock, Settings]]:
    card = tmp_path / "rates.toml"
    card.write_text(CARD)
    settings = replace(
        settings,
        rates=str(card),
        tick_s=10,
        buffer_s=60,
        stale_after_s=90,
        max_call_s=600,
        ring_timeout_s=45,
        inbound_grace_s=30,
        clock_tolerance_s=TOLERANCE_S,
        sync_min_age_s=5,
    )
    clock = ManualClock()
    loop = Loop(settings, clock)
    yield loop, clock, settings
    loop.close()


# The long form runs for minutes: its own timeout, growing with the work asked for.
@pytest.mark.timeout(120 + EXAMPLES * STEPS // 5)
def test_gate_matches_the_model(served: tuple[Loop, ManualClock, Settings]) -> None:
    gate, clock, config = served
    card = load_rate_card(config.rates)
    ids = itertools.count()
    seen: Counter[str] = Counter()  # what the sequences exercised, printed at the end

    def event(name: str) -> None:
        seen[name] += 1

    def rate_of(service: str, direction: str, from_: str, to: str) -> Rate:
        return card.match(service, direction, to if direction == "outbound" else from_)

    class GateMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            # A workspace of today's kind: no plan, no allowances, no credit buckets (issue 10
            # adds plans; a workspace without one must be billed exactly as modelled here).
            status, ws = http(gate.port, "POST", "/v1/workspaces", PLATFORM_KEY, {"name": "m"})
            assert status == 201
            self.ws = ws["id"]
            self.admin = ws["key"]
            status, key = http(
                gate.port, "POST", f"/v1/workspaces/{self.ws}/keys", PLATFORM_KEY,
                {"role": "switch"},
            )  # fmt: skip
            assert status == 201
            self.switch = key["key"]
            self.books: Books | None = None
            self.starts: dict[str, tuple[dict[str, Any], Any]] = {}  # first body and answer
            self.results: dict[str, Any] = {}  # end answers, for repeats
            self.topups: list[tuple[str, dict[str, Any], Any]] = []
            self.cursor = "0-0"  # of the workspace's event stream

        @property
        def m(self) -> Books:
            assert self.books is not None
            return self.books

        @initialize(
            balance=st.sampled_from([0, 50_000, 150_000, 400_000, 2_000_000, 10_000_000]),
            grace=st.sampled_from([0, 10, 30]),
            threshold=st.sampled_from([None, 0, 500_000]),
        )
        def workspace(self, balance: int, grace: int, threshold: int | None) -> None:
            """From the signup credit to a drawn balance, inbound grace and limit threshold."""
            credit = self.wallet()["balance_micros"]
            if balance != credit:
                self.post_adjustment(balance - credit)
            patch: dict[str, Any] = {"inbound_grace_s": grace}
            if threshold is not None:
                patch["inbound_limit_threshold_usd"] = f"{threshold / 1e6:.6f}"
            status, body = http(gate.port, "PATCH", "/v1/workspace", self.admin, patch)
            assert status == 200, body
            self.books = Books(
                Config(
                    buffer_s=config.buffer_s,
                    tick_s=config.tick_s,
                    grace_s=grace,
                    max_call_s=config.max_call_s,
                    ring_s=config.ring_timeout_s,
                    stale_after_s=config.stale_after_s,
                    tolerance_s=TOLERANCE_S,
                    sync_min_age_s=config.sync_min_age_s,
                ),
                balance=balance,
                threshold=threshold,
            )
            # Money only ever moved by adjustments so far: no zero_since unless it hit zero.
            if balance == 0:
                self.m.zero_since = clock.ms

        # -- helpers ---------------------------------------------------------------------

        def wallet(self) -> dict[str, Any]:
            status, body = http(gate.port, "GET", "/v1/wallet", self.admin)
            assert status == 200
            return dict(body)

        def post_adjustment(self, micros: int) -> int:
            status, body = http(
                gate.port, "POST", f"/v1/workspaces/{self.ws}/adjustments", PLATFORM_KEY,
                {"amount_usd": f"{micros / 1e6:.6f}", "type": "adjustment",
                 "description": "model"},
            )  # fmt: skip
            assert status in (201, 402), body
            return status

        def tick(self) -> None:
            """One ticker round in Gate and in the model; check what the round finished."""
            gate.run(gate.app[TICKER].run_once())
            for call_id in self.m.tick(clock.ms):
                self.check_ended(call_id)

        def check_ended(self, call_id: str) -> None:
            status, view = http(gate.port, "GET", f"/v1/calls/{call_id}", self.admin)
            assert status == 200, view
            self.expect_result(call_id, view, self.m.ended[call_id])

        def expect_result(self, call_id: str, body: Any, want: Ended) -> None:
            got = (body["state"], body["duration_s"], body["cost_micros"], body["flag"])
            assert got == ("ended", want.duration_s, want.cost_micros, want.flag), (call_id, body)
            assert body["duration_clamped"] == want.clamped, (call_id, body)
            self.results[call_id] = body
            event(f"ended {want.flag or 'by the switch'}{' clamped' if want.clamped else ''}")

        def live_ids(self) -> list[str]:
            return sorted(self.m.calls)

        # -- calls -----------------------------------------------------------------------

        @precondition(lambda self: self.books is not None)
        @rule(
            route=st.sampled_from(ROUTES),
            answered=st.booleans(),
            promised=st.booleans(),
        )
        def start(self, route: tuple[str, str, str, str], answered: bool, promised: bool) -> None:
            service, direction, from_, to = route
            # Fixed width: ids sort (and the ticker breaks due-time ties) in the order they were
            # made, whatever the counter reached, so a replayed sequence picks the same calls.
            call_id = f"m{next(ids):09d}"
            body: dict[str, Any] = {"call_id": call_id, "direction": direction, "from": from_,
                                    "to": to, "service": service, "answered": answered}  # fmt: skip
            if promised:
                body["heartbeat_s"] = 20
            rate = rate_of(service, direction, from_, to)
            want = self.m.start(
                call_id, direction, service, rate, clock.ms, answered=answered, promised=promised
            )
            status, answer = http(gate.port, "POST", "/v1/calls", self.switch, body)
            event(f"start {service} {direction}: {want}")
            if want != "allow":
                assert (status, answer["error"]["code"]) == (402, want), (want, answer)
                return
            assert status == 201, answer
            c = self.m.calls[call_id]
            assert answer["increment"] == str(rate.increment)
            assert answer["reserved_micros"] == c.held
            assert answer["granted_s"] == c.horizon_s
            grace = self.m.cfg.grace_s if direction == "inbound" else 0
            assert answer["max_duration_s"] == (c.horizon_s + grace if c.cut else None)
            again = http(gate.port, "POST", "/v1/calls", self.switch, body)
            assert again == (200, answer)  # a repeated start: the first answer, nothing more
            self.starts[call_id] = (body, answer)
            if c.cut:
                event(f"start limited {direction}")

        @precondition(lambda self: self.books is not None and self.m.calls)
        @rule(data=st.data())
        def answer(self, data: st.DataObject) -> None:
            call_id = data.draw(st.sampled_from(self.live_ids()))
            self.m.answer(call_id, clock.ms)
            status, body = http(gate.port, "POST", f"/v1/calls/{call_id}/answer", self.switch)
            assert status == 200, body

        @precondition(lambda self: self.books is not None and self.m.calls)
        @rule(data=st.data(), skew=st.integers(-20, 10), repeat=st.booleans())
        def heartbeat(self, data: st.DataObject, skew: int, repeat: bool) -> None:
            """elapsed_s behind, on, or ahead of the gate's clock (clamped beyond tolerance)."""
            self.beat(data.draw(st.sampled_from(self.live_ids())), skew, repeat)

        @precondition(
            lambda self: self.books is not None and any(c.cut_sent for c in self.m.calls.values())
        )
        @rule(data=st.data(), skew=st.integers(-5, 5))
        def heartbeat_past_cut(self, data: st.DataObject, skew: int) -> None:
            """A call that was sent its cut and is still up: the answer is "hangup"."""
            past = [i for i in self.live_ids() if self.m.calls[i].cut_sent]
            event("heartbeat past a cut")
            self.beat(data.draw(st.sampled_from(past)), skew, repeat=False)

        def beat(self, call_id: str, skew: int, repeat: bool) -> None:
            c = self.m.calls[call_id]
            since = c.ans or c.t0
            elapsed = max((clock.ms - since) // 1000 + skew, 0)
            seq = c.hseq + 1
            hangup = self.m.heartbeat(call_id, elapsed, seq, clock.ms)
            beat = {"elapsed_s": elapsed, "seq": seq}
            path = f"/v1/calls/{call_id}/heartbeat"
            status, body = http(gate.port, "POST", path, self.switch, beat)
            assert status == 200, body
            assert body["action"] == ("hangup" if hangup else "continue"), (body, c)
            event(f"heartbeat {body['action']}{' clamped' if c.clamped else ''}")
            if repeat:  # the same seq again changes nothing
                status, again = http(gate.port, "POST", path, self.switch, beat)
                assert status == 200 and again["granted_s"] == body["granted_s"], again

        @precondition(lambda self: self.books is not None and self.m.calls)
        @rule(data=st.data(), share=st.floats(0, 1), beyond=st.integers(0, 40))
        def end(self, data: st.DataObject, share: float, beyond: int) -> None:
            """A CDR duration up to the talk time so far, or beyond the gate's clock."""
            call_id = data.draw(st.sampled_from(self.live_ids()))
            c = self.m.calls[call_id]
            talk = (clock.ms - c.ans) // 1000 if c.ans else 0
            duration = int(talk * share) + (beyond if beyond > 30 else 0)
            want = self.m.end(call_id, duration, clock.ms)
            status, body = http(
                gate.port, "POST", f"/v1/calls/{call_id}/end", self.switch,
                {"duration_s": duration},
            )  # fmt: skip
            assert status == 200, body
            self.expect_result(call_id, body, want)
            assert body["balance_micros"] == self.m.balance
            self.tick()  # the released hold woke the limited calls

        @precondition(lambda self: self.results)
        @rule(data=st.data())
        def repeat_end(self, data: st.DataObject) -> None:
            call_id = data.draw(st.sampled_from(sorted(self.results)))
            duration = data.draw(st.sampled_from([1, 30, 400]))
            status, body = http(gate.port, "POST", f"/v1/calls/{call_id}/end", self.switch,
                                {"duration_s": duration})  # fmt: skip
            assert status == 200, body
            # the first result, unless the gate swept the call and the switch reports more
            first = self.m.ended[call_id]
            want = self.m.repeat_end(call_id, duration, clock.ms)
            self.expect_result(call_id, body, want)
            event("late end billed" if want is not first else "repeated end")
            if call_id in self.starts:
                start, _ = self.starts[call_id]
                status, body = http(gate.port, "POST", "/v1/calls", self.switch, start)
                assert status == 409 and body["error"]["code"] == "invalid_state", body

        @precondition(lambda self: self.books is not None)
        @rule(data=st.data(), stranger=st.booleans())
        def sync(self, data: st.DataObject, stranger: bool) -> None:
            """The switch lists the calls it has up; the gate ends the others as lost."""
            listed = set(data.draw(st.sets(st.sampled_from(self.live_ids() or ["none"]))))
            listed.discard("none")
            body = sorted(listed) + (["never-seen"] if stranger else [])
            lost = self.m.sync(listed, clock.ms)
            status, answer = http(gate.port, "POST", "/v1/calls/sync", self.switch,
                                  {"call_ids": body})  # fmt: skip
            assert status == 200, answer
            assert sorted(e["call_id"] for e in answer["ended"]) == sorted(lost)
            for ended in answer["ended"]:
                self.expect_result(ended["call_id"], ended, self.m.ended[ended["call_id"]])
            assert answer["not_live"] == (["never-seen"] if stranger else [])
            self.tick()

        # -- the clock: ticks, limits, cuts, ring timeouts, sweeps ----------------------------

        @precondition(lambda self: self.books is not None)
        @rule(seconds=st.integers(1, 45))
        def advance(self, seconds: int) -> None:
            clock.advance(seconds)
            self.tick()

        # -- money -----------------------------------------------------------------------

        @precondition(lambda self: self.books is not None)
        @rule(usd=st.integers(1, 20))
        def topup(self, usd: int) -> None:
            key = f"t{next(ids)}"
            body = {"amount_usd": usd, "payment_method_id": "pm_card_visa"}
            status, answer = http(gate.port, "POST", "/v1/wallet/topup", self.admin, body,
                                  **{"Idempotency-Key": key})  # fmt: skip
            assert status == 201, answer
            self.m.credit(usd * 1_000_000, clock.ms)
            self.topups.append((key, body, answer))
            self.tick()

        @precondition(lambda self: self.topups)
        @rule(data=st.data())
        def replay_topup(self, data: st.DataObject) -> None:
            key, body, first = data.draw(st.sampled_from(self.topups))
            status, answer = http(gate.port, "POST", "/v1/wallet/topup", self.admin, body,
                                  **{"Idempotency-Key": key})  # fmt: skip
            assert status in (200, 201) and answer == first  # credited once

        @precondition(lambda self: self.books is not None)
        @rule(micros=st.integers(-2_000_000, 2_000_000).filter(bool))
        def adjust(self, micros: int) -> None:
            allowed = micros > 0 or self.m.may_debit(-micros)
            status = self.post_adjustment(micros)
            assert status == (201 if allowed else 402)
            if allowed:
                self.m.credit(micros, clock.ms)
                self.tick()

        # -- after every step ------------------------------------------------------------

        @invariant()
        def books_match(self) -> None:
            if self.books is None:
                return
            wallet = self.wallet()
            assert (wallet["balance_micros"], wallet["reserved_micros"]) == (
                self.m.balance,
                self.m.reserved,
            ), self.m.calls
            # §11.4: below zero only through grace time or time kept past a cut.
            assert self.m.balance >= 0 or self.m.unpaid_time
            for call_id, c in self.m.calls.items():
                status, view = http(gate.port, "GET", f"/v1/calls/{call_id}", self.admin)
                assert status == 200, view
                got = (view["state"], view["billed_s"], view["granted_s"],
                       view["reserved_micros"], view["hangup_at_ms"], view["cut_sent"],
                       view["cut_at"] is not None)  # fmt: skip
                want = ("live" if c.ans else "pending", c.billed_s, c.horizon_s, c.held,
                        self.m.hangup_at_ms(c), c.cut_sent, bool(c.cut))  # fmt: skip
                assert got == want, (call_id, got, want, c)
                if c.cut:
                    event("a live call limited" + (", cut sent" if c.cut_sent else ""))
            problems, _ = gate.run(check_all(gate.redis, [self.ws]))
            assert not problems, problems
            # The limits and cuts the switch was sent, in order.
            assert self.signals() == self.m.signals
            self.m.signals.clear()

        def signals(self) -> list[tuple[str, str, str]]:
            """call.limit and call.cut events written since the last look."""
            stream = keys.for_workspace(self.ws).events
            got = entries(gate.run(gate.redis.xrange(stream, f"({self.cursor}", "+")))
            if got:
                self.cursor = text(got[-1][0])
            signals = []
            for _, fields in got:
                kind = text(fields[b"type"])
                if kind == "call.limit":
                    detail = text(fields[b"d:max_duration_s"])
                elif kind == "call.cut":
                    detail = text(fields[b"d:reason"])
                else:
                    continue
                signals.append((kind, text(fields[b"d:call_id"]), detail))
            return signals

        def teardown(self) -> None:
            if self.books is None:
                return
            for call_id in self.live_ids():
                c = self.m.calls[call_id]
                want = self.m.end(call_id, 0, clock.ms)  # 0, or what heartbeats showed
                status, body = http(gate.port, "POST", f"/v1/calls/{call_id}/end", self.switch,
                                    {"duration_s": 0})  # fmt: skip
                assert status == 200 and body["cost_micros"] == want.cost_micros, (body, c)

    run_state_machine_as_test(
        GateMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    print("\n" + "\n".join(f"{n:6d}  {name}" for name, n in sorted(seen.items())))


async def test_time_kept_past_an_ignored_cut_is_billed_at_a_late_end(
    client: Client, clock: ManualClock
) -> None:
    """docs/design.md §4: time a switch keeps a call up past its cut is billed at end, never
    dropped."""
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await set_balance(client, ws, 500_000)  # $0.50: 150 s at $0.20/min
    assert (await client.post("/v1/calls", json=call("leak"), headers=sw)).status == 201
    await tick(client, clock, 150, step=5)
    state = await (await client.get("/v1/calls/leak", headers=sw)).json()
    assert state["cut_sent"] and state["granted_s"] == 150
    # The switch ignores the cut and keeps the call up 110 s more, then sends its CDR.
    await tick(client, clock, 110, step=5)
    end = await client.post("/v1/calls/leak/end", json={"duration_s": 260}, headers=sw)
    assert end.status == 200
    rate = load_rate_card().match("voice", "outbound", "+14155550123")
    assert rate is not None
    # The sweep billed 150 s (to the cut, 90 s after it); the end bills the other 110 s.
    assert (await wallet_of(client, sw))["balance_micros"] == 500_000 - rate.cost(260)
    body = await end.json()
    assert body["duration_s"] == 260 and body["cost_micros"] == rate.cost(260), body
    rows = [r for r in await all_rows(client, ws["key"]) if r["type"] == "call"]
    assert [r.get("flag") for r in rows] == ["late_end", "stale"], rows
    assert sum(r["amount_micros"] for r in rows) == -rate.cost(260)
    # Once: a repeat, or a switch that claims more later, bills nothing more.
    for duration in (260, 300):
        again = await client.post("/v1/calls/leak/end", json={"duration_s": duration},
                                  headers=sw)  # fmt: skip
        assert (await again.json())["cost_micros"] == rate.cost(260)
    assert (await wallet_of(client, sw))["balance_micros"] == 500_000 - rate.cost(260)

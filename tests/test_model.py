"""A model-based test: random sequences of switch and wallet actions against a real Gate.

A hypothesis RuleBasedStateMachine starts, answers, heartbeats and ends calls, repeats
starts and ends, tops up (and replays top-ups), adjusts, and moves the clock (ticks, cuts,
sweeps) against a Gate on a real Redis, while a pure-Python model keeps what the balance
must be: signup credit + top-ups + adjustments - cost(duration) of every ended call, each
cost from the rate card's own formula. After every step the gate's balance must equal the
model's, and DESIGN §11's invariants must hold (`gate check` logic). The short form runs in
CI; `GATE_MODEL_EXAMPLES=200 .venv/bin/pytest -q tests/test_model.py` is the long one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from gate.api.http import TICKER
from gate.app import create_app
from gate.calls.rating import load_rate_card
from gate.clock import ManualClock
from gate.history.check import check_all
from gate.settings import Settings
from gate.store.redis_proc import free_port
from tests.conftest import PLATFORM_KEY

T = TypeVar("T")
EXAMPLES = int(os.environ.get("GATE_MODEL_EXAMPLES", "25"))
FROM, TO = "+15550001", "+15550002"
RATE = load_rate_card().match("voice", "outbound", TO)


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


@dataclass
class Call:
    id: str
    answered_ms: int | None
    seq: int = 0


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[Loop, ManualClock]]:
    clock = ManualClock()
    loop = Loop(replace(settings, tick_s=10, stale_after_s=90), clock)
    yield loop, clock
    loop.close()


def test_gate_matches_the_model(served: tuple[Loop, ManualClock]) -> None:
    gate, clock = served
    ids = itertools.count()

    class GateMachine(RuleBasedStateMachine):
        live = Bundle("live")
        ended = Bundle("ended")
        topups = Bundle("topups")

        def __init__(self) -> None:
            super().__init__()
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
            self.balance = self.wallet()["balance_micros"]  # the signup credit
            self.calls: dict[str, Call] = {}
            self.results: dict[str, Any] = {}

        def wallet(self) -> dict[str, Any]:
            status, body = http(gate.port, "GET", "/v1/wallet", self.admin)
            assert status == 200
            return dict(body)

        def elapsed_s(self, call: Call) -> int:
            return 0 if call.answered_ms is None else (clock.ms - call.answered_ms) // 1000

        # -- calls ---------------------------------------------------------------------

        @rule(target=live, answered=st.booleans())
        def start(self, answered: bool) -> Any:
            call_id = f"m{next(ids)}"
            body = {"call_id": call_id, "direction": "outbound", "from": FROM, "to": TO,
                    "answered": answered}  # fmt: skip
            status, answer = http(gate.port, "POST", "/v1/calls", self.switch, body)
            assert status in (201, 402), answer
            if status == 402:
                assert answer["error"]["code"] == "insufficient_balance"
                return multiple()
            self.calls[call_id] = Call(call_id, clock.ms if answered else None)
            again = http(gate.port, "POST", "/v1/calls", self.switch, body)
            assert again == (200, answer)  # a repeated start: the first answer, nothing more
            return call_id

        @rule(call_id=live)
        def answer(self, call_id: str) -> None:
            call = self.calls.get(call_id)
            if call is None or call.answered_ms is not None:
                return
            status, body = http(gate.port, "POST", f"/v1/calls/{call_id}/answer", self.switch)
            assert status == 200, body
            call.answered_ms = clock.ms

        @rule(call_id=live)
        def heartbeat(self, call_id: str) -> None:
            call = self.calls.get(call_id)
            if call is None or call.answered_ms is None:
                return
            call.seq += 1
            beat = {"elapsed_s": self.elapsed_s(call), "seq": call.seq}
            status, body = http(
                gate.port, "POST", f"/v1/calls/{call_id}/heartbeat", self.switch, beat
            )
            assert status == 200, body
            assert body["action"] in ("continue", "hangup")

        @rule(target=ended, call_id=consumes(live), share=st.floats(0, 1))
        def end(self, call_id: str, share: float) -> Any:
            call = self.calls.pop(call_id, None)
            if call is None:
                return multiple()
            duration = int(self.elapsed_s(call) * share)
            status, body = http(
                gate.port, "POST", f"/v1/calls/{call_id}/end", self.switch,
                {"duration_s": duration},
            )  # fmt: skip
            assert status == 200, body
            if body["stale"]:  # the sweeper ended it first: billed to its last evidence
                duration = body["duration_s"]
            else:
                assert body["duration_s"] == duration
            assert body["cost_micros"] == RATE.cost(duration)  # DESIGN §11.3
            self.balance -= body["cost_micros"]
            assert body["balance_micros"] == self.balance
            self.results[call_id] = body
            return call_id

        @rule(call_id=ended)
        def repeat_end(self, call_id: str) -> None:
            status, body = http(
                gate.port, "POST", f"/v1/calls/{call_id}/end", self.switch, {"duration_s": 1}
            )
            assert (status, body) == (200, self.results[call_id])
            status, body = http(gate.port, "POST", "/v1/calls", self.switch,
                                {"call_id": call_id, "direction": "outbound", "from": FROM,
                                 "to": TO})  # fmt: skip
            assert status == 409 and body["error"]["code"] == "invalid_state"

        # -- the clock: ticks, cuts, sweeps ---------------------------------------------

        @rule(seconds=st.integers(1, 40))
        def advance(self, seconds: int) -> None:
            clock.advance(seconds)
            gate.run(gate.app[TICKER].run_once())
            for call_id in list(self.calls):
                status, view = http(gate.port, "GET", f"/v1/calls/{call_id}", self.admin)
                assert status == 200, view
                if view["state"] == "ended":  # swept: stale heartbeats or an unanswered ring
                    call = self.calls.pop(call_id)
                    assert view["cost_micros"] == RATE.cost(view["duration_s"])
                    assert view["duration_s"] <= self.elapsed_s(call) + 10  # at most a tick
                    self.balance -= view["cost_micros"]
                    self.results[call_id] = view

        # -- money ----------------------------------------------------------------------

        @rule(target=topups, usd=st.integers(1, 100))
        def topup(self, usd: int) -> Any:
            key = f"t{next(ids)}"
            body = {"amount_usd": usd, "payment_method_id": "pm_card_visa"}
            status, answer = http(gate.port, "POST", "/v1/wallet/topup", self.admin, body,
                                  **{"Idempotency-Key": key})  # fmt: skip
            assert status == 201, answer
            self.balance += usd * 1_000_000
            return (key, body, answer)

        @rule(previous=topups)
        def replay_topup(self, previous: tuple[str, dict[str, Any], Any]) -> None:
            key, body, first = previous
            status, answer = http(gate.port, "POST", "/v1/wallet/topup", self.admin, body,
                                  **{"Idempotency-Key": key})  # fmt: skip
            assert status in (200, 201) and answer == first  # credited once

        @rule(micros=st.integers(-5_000_000, 5_000_000).filter(bool))
        def adjust(self, micros: int) -> None:
            status, body = http(
                gate.port, "POST", f"/v1/workspaces/{self.ws}/adjustments", PLATFORM_KEY,
                {"amount_usd": f"{micros / 1e6:.6f}", "type": "adjustment",
                 "description": "model"},
            )  # fmt: skip
            assert status in (201, 402), body
            if status == 201:
                self.balance += micros

        # -- after every step -----------------------------------------------------------

        @invariant()
        def books(self) -> None:
            wallet = self.wallet()
            assert wallet["balance_micros"] == self.balance
            if not self.calls:
                assert wallet["reserved_micros"] == 0
            problems, _ = gate.run(check_all(gate.redis, [self.ws]))
            assert not problems, problems

        def teardown(self) -> None:
            for call_id in list(self.calls):
                self.end(call_id, 1.0)

    run_state_machine_as_test(
        GateMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )

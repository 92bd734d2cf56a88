"""End to end: real SIP calls through the shipped Kamailio config against a real Gate.

Kamailio 5.6 (Debian) runs what `gate switch-config kamailio` prints; pjsua2 user agents
(PyPI `pjsua2-python`: real SIP and RTP stacks in-process, so each agent reports its own
call times to the millisecond and takes a BYE at any moment, which SIPp scenarios cannot
without a script per case) call through it; Gate runs as `gate serve` on its own private
redis-server with a compressed clock (tick 1 s, buffer 5 s, grace 2 s) and a $0.60/min 1/1
card, so a second costs 10,000 micros. Everything is on 127.0.0.1 and free ports.

The long mode runs many more cut calls and prints the figures the README quotes:
    GATE_E2E_CUT_CALLS=200 .venv/bin/pytest -s tests/test_kamailio_e2e.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.switch_stack import (
    RATE_MICROS_PER_S,
    Lines,
    LiveWatch,
    Stack,
    events_of,
    kamailio_binary,
    pjsua2_missing,
)

CUT_CALLS = int(os.environ.get("GATE_E2E_CUT_CALLS", "3"))
WAVE = 4  # concurrent cut calls per caller process (pjsua2 misbehaves past 4)
SKEW_MS = 50

pytestmark = [
    pytest.mark.skipif(
        kamailio_binary() is None,
        reason="kamailio is not installed and could not be (make install installs the Debian "
        "packages kamailio, kamailio-extra-modules, -utils-modules, -json-modules, -tls-modules)",
    ),
    pytest.mark.skipif(pjsua2_missing() is not None, reason=pjsua2_missing() or ""),
    pytest.mark.timeout(300 + 20 * CUT_CALLS),
]


def calls_of(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per call of one caller: call_id, status, confirmed/disconnected ms, who hung up."""
    calls: dict[int, dict[str, Any]] = {}
    for e in events:
        if "idx" not in e:
            continue
        call = calls.setdefault(e["idx"], {"call_id": e["call_id"]})
        if e["event"] == "confirmed":
            call["confirmed"] = e["t_ms"]
        else:
            call |= {"ended": e["t_ms"], "status": e["status"], "by": e["by"],
                     "reason": e.get("reason", "")}  # fmt: skip
    return calls


def billable_s(call: dict[str, Any]) -> int:
    """The whole seconds a call lasted by its caller's own clock. A call the switch ended
    (a cut) ends on a whole second after Gate's answer by construction; the caller's 200 OK
    arrives a few ms after Gate's answer (Kamailio relays it once /answer returns), so it
    reads a cut call up to SKEW_MS short of that second."""
    lasted = call["ended"] - call["confirmed"]
    return (lasted + (SKEW_MS if call["by"] == "remote" else 0)) // 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@pytest.fixture
def stack(tmp_path: Path) -> Any:
    s = Stack(tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_real_calls_through_kamailio(stack: Stack) -> None:
    callee = Lines(stack.callee())
    watch = LiveWatch(stack)
    answered: list[dict[str, Any]] = []  # every answered call, for the books

    # 1. refused at low balance: below the 5 s buffer (50,000 micros) -> SIP 402
    stack.set_balance(30_000)
    refused = calls_of(events_of(stack.caller([{"at_ms": 0, "hold_ms": 1000},
                                               {"at_ms": 300, "hold_ms": 1000}])))  # fmt: skip
    assert [c["status"] for c in refused.values()] == [402, 402], refused
    assert all("confirmed" not in c for c in refused.values())

    # 2. cut at zero, on both legs: concurrent outbound calls share what is left
    delays: list[float] = []
    remaining = CUT_CALLS
    while remaining:
        wave = min(WAVE, remaining)
        remaining -= wave
        stack.set_balance(50_000 * wave + 30_000)
        plan = [{"at_ms": 120 * i, "hold_ms": 60_000} for i in range(wave)]
        cut = calls_of(events_of(stack.caller(plan), timeout=60))
        for call in cut.values():
            assert call.get("confirmed"), call
            assert call["by"] == "remote", f"the caller hung up, not Kamailio: {call}"
            money_out = watch.hangup_ms[call["call_id"]]
            bye_callee = callee.ended(call["call_id"])
            delays += [call["ended"] - money_out, bye_callee - money_out]
            answered.append(call)
    assert len(delays) == 2 * CUT_CALLS
    assert all(-50 <= d <= 1500 for d in delays), delays

    # 3. an inbound call limited: 2 paid seconds + 2 s grace, then cut
    stack.set_balance(20_000)
    inbound = calls_of(events_of(stack.caller([{"at_ms": 0, "hold_ms": 30_000}], carrier=True)))
    call = inbound[0]
    assert call["by"] == "remote", call
    lasted = call["ended"] - call["confirmed"]
    assert 3_900 <= lasted <= 5_500, lasted
    answered.append(call)

    # 4. funded calls end as the caller says; Gate stopped mid-call
    # ... and a forged, stale or replayed call.cut ends nothing
    stack.set_balance(10_000_000)
    callers = stack.caller([{"at_ms": 0, "hold_ms": 2_300}, {"at_ms": 100, "hold_ms": 3_700}])
    stack.wait(lambda: len(watch.live) == 2, 10, "the funded calls did not start")
    for n, call_id in enumerate(sorted(watch.live)):
        cut = {"id": f"evt_forged_{n}", "type": "call.cut", "data": {"call_id": call_id}}
        assert stack.webhook(cut, secret="whsec_" + "Zm9yZ2VkLXNlY3JldC0wMTIzNDU2Nzg5")[0] == 401
        assert stack.webhook(cut | {"id": f"evt_stale_{n}"}, age_s=400)[0] == 401
    other = {"id": "evt_replayed", "type": "call.cut", "data": {"call_id": "not-up-here"}}
    assert stack.webhook(other) == (200, "ok\n")
    assert stack.webhook(other) == (200, "duplicate\n")
    normal = calls_of(events_of(callers))
    assert all(c["by"] == "local" for c in normal.values()), normal
    answered += normal.values()
    long_call = stack.caller(
        [
            {"at_ms": 0, "hold_ms": 60_000},  # cut by Kamailio's own timer
            {"at_ms": 3_000, "hold_ms": 1_000},
        ]
    )  # outbound: fails closed
    opened = stack.caller([{"at_ms": 3_000, "hold_ms": 2_300}], carrier=True)  # fails open
    time.sleep(1.5)
    stack.stop_gate()
    stopped_at = time.time() * 1000
    time.sleep(7.5)
    stack.start_gate()
    outage = calls_of(events_of(long_call, timeout=60))
    assert outage[0]["by"] == "remote", outage  # Kamailio ended it at its last hangup_at
    assert outage[0]["ended"] - stopped_at < 6_000, "cut within the buffer after Gate stopped"
    assert outage[1]["status"] == 503 and "confirmed" not in outage[1], outage
    failed_open = calls_of(events_of(opened, timeout=60))[0]
    assert failed_open.get("confirmed") and failed_open["by"] == "local", failed_open
    answered += [outage[0], failed_open]
    watch.stop()

    # 5. the books, to the micro, against the user agents' own durations; gate check
    expected = {c["call_id"]: billable_s(c) * RATE_MICROS_PER_S for c in answered}
    rows: dict[str, int] = {}
    deadline = time.monotonic() + 30  # the ends of the outage are retried until Gate is back
    while time.monotonic() < deadline and set(rows) != set(expected):
        page = stack.api("GET", "/v1/wallet/transactions?type=call&limit=200")
        rows = {r["reference"]: -r["amount_micros"] for r in page["data"]}
        time.sleep(0.2)
    assert set(rows) == set(expected), (sorted(rows), sorted(expected))
    difference = sum(rows.values()) - sum(expected.values())
    mismatched = {k: (rows[k], v) for k, v in expected.items() if rows[k] != v}
    assert difference == 0 and not mismatched, mismatched
    flags = {r["reference"]: r.get("flag") for r in
             stack.api("GET", "/v1/wallet/transactions?type=call&limit=200")["data"]}  # fmt: skip
    assert flags.pop(failed_open["call_id"]) == "unauthorized_call"
    assert set(flags.values()) == {None}, flags  # no lost_end, stale or clamped call
    assert stack.redis is not None
    check = subprocess.run([sys.executable, "-m", "gate", "check"], capture_output=True,
                           text=True, timeout=60,
                           env=os.environ | {"GATE_REDIS_URL": stack.redis.url})  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr

    print(
        f"\ne2e: {len(answered)} answered calls, {len(refused)} refused (402), "
        f"{CUT_CALLS} cut at zero: money-out -> BYE p50 {statistics.median(delays):.1f} ms, "
        f"p99 {percentile(delays, 99):.1f} ms, max {max(delays):.1f} ms (both legs); "
        f"books difference {difference} micros"
    )

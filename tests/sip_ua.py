"""A SIP user agent for the end-to-end test (pjsua2, null audio), run as its own process.

    python -m tests.sip_ua uas PORT [PROXY [PLAN]]  answer every call (ring RING_MS), never hang up
                                                    (and make the calls of PLAN, if given)
    python -m tests.sip_ua uac PORT PROXY PLAN [register]
                                                    make the calls of PLAN (JSON list of
                                                    {"to": uri, "at_ms": start, "hold_ms": n})

With PROXY (uas) or `register` (uac) the agent first REGISTERs with the proxy as a phone
would (sip:USER@PROXY, registrar sip:PROXY): its "ready" line (uas) or its first call
(uac) waits for the 200, and a registration that fails ends the agent with a
"registered" line whose status is not 200. Incoming calls are numbered from 1000 (idx),
so they never share a number with the agent's own calls.

Each call event is one JSON line on stdout: {"ua", "idx", "call_id", "event", "t_ms",
"status", "by"}; event is "incoming" (uas only), "confirmed" or "disconnected", t_ms
wall-clock ms, by "local" when this agent hung up. The uac exits when its calls are over.
pjsua2 runs in this process's main thread only (threadCnt 0), which is why each agent is
its own process.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Any

import pjsua2 as pj

RING_MS = 100


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Call(pj.Call):  # type: ignore[misc]
    def __init__(self, acc: pj.Account, ua: str, idx: int, call_id: int = -1) -> None:
        super().__init__(acc, call_id)
        self.ua, self.idx = ua, idx
        self.hung_up_here = False
        self.done = False
        self.confirmed_ms = 0

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and not self.confirmed_ms:
            self.confirmed_ms = now_ms()
            emit(ua=self.ua, idx=self.idx, call_id=info.callIdString, event="confirmed",
                 t_ms=self.confirmed_ms, status=200, by="")  # fmt: skip
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.done:
            self.done = True
            # connect_ms: pjsip's own connect-to-disconnect time, taken in C as the states
            # change (t_ms is when Python got here, which may be a few ms late)
            connected = info.connectDuration.sec * 1000 + info.connectDuration.msec
            emit(ua=self.ua, idx=self.idx, call_id=info.callIdString, event="disconnected",
                 t_ms=now_ms(), status=info.lastStatusCode, reason=info.lastReason,
                 by="local" if self.hung_up_here else "remote",
                 connect_ms=connected if self.confirmed_ms else None)  # fmt: skip


class Account(pj.Account):  # type: ignore[misc]
    def __init__(self, ua: str) -> None:
        super().__init__()
        self.ua = ua
        self.reg_status = 0
        self.calls: list[Call] = []
        self.answer_at: list[tuple[int, Call]] = []

    def onRegState(self, prm: Any) -> None:
        if not self.reg_status:
            self.reg_status = int(prm.code)
            emit(ua=self.ua, event="registered", t_ms=now_ms(), status=self.reg_status)

    def onIncomingCall(self, prm: Any) -> None:
        call = Call(self, self.ua, 1000 + len(self.calls), prm.callId)
        self.calls.append(call)
        emit(ua=self.ua, idx=call.idx, call_id=call.getInfo().callIdString, event="incoming",
             t_ms=now_ms(), status=0, by="")  # fmt: skip
        ring = pj.CallOpParam()
        ring.statusCode = 180
        call.answer(ring)
        self.answer_at.append((now_ms() + RING_MS, call))


def main(argv: list[str]) -> int:
    mode, port = argv[0], int(argv[1])
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.maxCalls = 32
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = port
    tcfg.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.audDevManager().setNullDev()
    ep.libStart()
    acfg = pj.AccountConfig()
    user = "14155550100" if mode == "uac" else "14155550123"
    registrar = argv[2] if mode == "uas" and len(argv) > 2 else ""
    if mode == "uac" and argv[4:] == ["register"]:
        registrar = argv[2]
    acfg.idUri = f"sip:{user}@{registrar or f'127.0.0.1:{port}'}"
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    if registrar:
        acfg.regConfig.registrarUri = f"sip:{registrar}"
        acfg.regConfig.timeoutSec = 300
    if mode == "uac" and not registrar:
        acfg.sipConfig.proxies.append(f"sip:{argv[2]};lr")
    acc = Account(mode)
    acc.create(acfg)
    deadline = now_ms() + 10_000
    while registrar and not acc.reg_status and now_ms() < deadline:
        ep.libHandleEvents(5)
    if registrar and acc.reg_status != 200:
        if not acc.reg_status:
            emit(ua=mode, event="registered", t_ms=now_ms(), status=408)
        acc.shutdown()
        del acc
        ep.libDestroy()
        return 1
    emit(ua=mode, event="ready", t_ms=now_ms())
    plan: list[dict[str, Any]] = json.loads(argv[3]) if len(argv) > 3 else []
    t0 = now_ms()
    started: set[int] = set()
    hangups: list[tuple[int, Call]] = []
    try:
        while True:
            ep.libHandleEvents(5)
            t = now_ms()
            for when, call in list(acc.answer_at):
                if when <= t:
                    acc.answer_at.remove((when, call))
                    ok = pj.CallOpParam()
                    ok.statusCode = 200
                    with contextlib.suppress(pj.Error):  # cancelled while ringing
                        call.answer(ok)
            for idx, item in enumerate(plan):
                if idx not in started and t - t0 >= item["at_ms"]:
                    started.add(idx)
                    call = Call(acc, mode, idx)
                    acc.calls.append(call)
                    call.makeCall(item["to"], pj.CallOpParam(True))
                    hangups.append((idx, call))
            for idx, call in hangups:
                hold = plan[idx]["hold_ms"]
                due = call.confirmed_ms and t - call.confirmed_ms >= hold
                if due and not call.done and not call.hung_up_here:
                    call.hung_up_here = True
                    with contextlib.suppress(pj.Error):
                        call.hangup(pj.CallOpParam(True))
            if mode == "uac" and len(started) == len(plan) and all(c.done for c in acc.calls):
                break
            if mode == "uas" and sys.stdin.closed:
                break
    except KeyboardInterrupt:
        pass
    finally:
        # every Call and the Account must be gone before libDestroy (pjsua2 asserts)
        hangups.clear()
        acc.answer_at.clear()
        acc.calls.clear()
        call = None
        acc.shutdown()
        del acc
        ep.libDestroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A real switch in the box, for the end-to-end test and its long mode: a private redis-server,
`gate serve` with a compressed clock, Kamailio running the config `gate switch-config kamailio`
prints, and pjsua2 user agents (tests/sip_ua.py), all on 127.0.0.1 and free ports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gate.store.redis_proc import RedisServer
from gate.switch.config import init_state_db, render

PLATFORM_KEY = "e2e-platform-key-0123456789abcdef"
SWITCH_KEY = "e2e-switch-key-0123456789abcdef"
SECRET = "whsec_" + "ZTJlLXdlYmhvb2stc2VjcmV0LTAxMjM0NTY3"
RATE_MICROS_PER_S = 10_000  # $0.60/min, 1/1 increment: a second costs 10,000 micros
RATES = """currency = "USD"
[[rates]]
service = "voice"
direction = "any"
prefix = ""
number_type = "any"
components = { voice_base = "0.60" }
connect_fee = "0"
increment = "1/1"
"""
GATE_ENV = {  # the compressed clock
    "GATE_TICK_S": "1",
    "GATE_BUFFER_S": "5",
    "GATE_INBOUND_GRACE_S": "2",
    "GATE_STALE_AFTER_S": "30",
    "GATE_SYNC_MIN_AGE_S": "3",
}


def kamailio_binary() -> str | None:
    found = shutil.which("kamailio")
    if found:
        return found
    return "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None


def pjsua2_missing() -> str | None:
    try:
        import pjsua2  # noqa: F401
    except ImportError as err:
        return f"pjsua2 (PyPI pjsua2-python) is not importable: {err}"
    return None


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in (5060, 6379, 8080):
            return port


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP (Kamailio's SIP listener and a UA's)."""
    while True:
        port = free_port(socket.SOCK_DGRAM)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


@dataclass
class Stack:
    base: Path
    redis: RedisServer | None = None
    gate: subprocess.Popen[bytes] | None = None
    kamailio: subprocess.Popen[bytes] | None = None
    gate_port: int = 0
    sip_port: int = 0
    http_port: int = 0
    callee_port: int = 0
    carrier_port: int = 0
    workspace: dict[str, Any] = field(default_factory=dict)
    agents: list[subprocess.Popen[str]] = field(default_factory=list)
    sync_s: int = 2
    registrar: bool = False  # --registrar: phones register and call each other through it
    state_db: bool = True  # --state-db: calls survive a restart of Kamailio
    # a deliberately broken config for the tests of the test: the printed text, changed
    mutate: Callable[[str], str] = lambda cfg: cfg

    # -- processes ---------------------------------------------------------------------

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer.start(self.base / "redis")
        self.gate_port = free_port()
        self.sip_port = free_udp_tcp_port()
        self.http_port = free_port()
        self.callee_port = free_udp_tcp_port()
        self.carrier_port = free_udp_tcp_port()
        (self.base / "rates.toml").write_text(RATES)
        self.start_gate()
        self.workspace = self.api("POST", "/v1/workspaces", {"name": "e2e"}, PLATFORM_KEY)
        self.start_kamailio()

    def start_gate(self) -> None:
        assert self.redis is not None
        env = (
            os.environ
            | GATE_ENV
            | {
                "GATE_REDIS_URL": self.redis.url,
                "GATE_PORT": str(self.gate_port),
                "GATE_HOST": "127.0.0.1",
                "GATE_PLATFORM_KEY": PLATFORM_KEY,
                "GATE_SWITCH_KEY": SWITCH_KEY,
                "GATE_SWITCH_WEBHOOK_URL": f"http://127.0.0.1:{self.http_port}/gate/events",
                "GATE_SWITCH_WEBHOOK_SECRET": SECRET,
                "GATE_SWITCH_WEBHOOK_EVENTS": "call",
                "GATE_RATES": str(self.base / "rates.toml"),
                "GATE_DATA_DIR": str(self.base / "var"),
                "GATE_LOG_LEVEL": "WARNING",
            }
        )
        with (self.base / "gate.log").open("ab") as log:  # the child keeps its own copy
            self.gate = subprocess.Popen(
                [sys.executable, "-m", "gate", "serve"], env=env, stdout=log, stderr=log
            )
        self.wait(lambda: self.http_ok("/readyz"), 60, "gate serve did not become ready")

    def stop_gate(self) -> None:
        if self.gate is not None and self.gate.poll() is None:
            self.gate.send_signal(signal.SIGKILL)
            self.gate.wait(10)
        self.gate = None

    def start_kamailio(self) -> None:
        binary = kamailio_binary()
        assert binary is not None
        state_db = str(self.base / "gate-state.sqlite") if self.state_db else ""
        if state_db:
            init_state_db(state_db)
        cfg = render(
            gate_url=f"http://127.0.0.1:{self.gate_port}",
            key=SWITCH_KEY,
            secret=SECRET,
            workspace=self.workspace["id"],
            sip_listen=f"udp:127.0.0.1:{self.sip_port}",
            http_listen=f"tcp:127.0.0.1:{self.http_port}",
            # a source list: the second entry is never used here
            carrier=[f"127.0.0.1:{self.carrier_port}", "203.0.113.10"],
            sync_s=self.sync_s,
            node="kam-a",
            keepalive_s=2,
            registrar=self.registrar,
            state_db=state_db,
        )
        path = self.base / "kamailio.cfg"
        path.write_text(self.mutate(cfg))
        run_dir = self.base / "kamailio-run"
        run_dir.mkdir(exist_ok=True)
        debug = ["-A", "GATE_DEBUG"] if os.environ.get("GATE_E2E_DEBUG") else []
        with (self.base / "kamailio.log").open("ab") as log:
            self.kamailio = subprocess.Popen(
                [
                    binary,
                    "-DD",
                    "-E",
                    *debug,
                    "-f",
                    str(path),
                    "-Y",
                    str(run_dir),
                    "-m",
                    "64",
                    "-M",
                    "8",
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: kill_kamailio gets them all
            )
        self.wait(lambda: self.http_ok("/gate/x", port=self.http_port, want=404), 60,
                  "kamailio did not start: see kamailio.log")  # fmt: skip

    def kill_kamailio(self) -> None:
        """Kamailio dies at once: SIGKILL to all its processes, no shutdown code runs."""
        assert self.kamailio is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.kamailio.pid, signal.SIGKILL)
        self.kamailio.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._group_alive(self.kamailio.pid):
            time.sleep(0.02)  # until its children are gone too (zombies hold no socket)
        self.kamailio = None

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
        return False

    def pause_gate(self) -> None:
        """Gate stalls (SIGSTOP): the kernel still accepts its connections, nothing answers."""
        assert self.gate is not None
        self.gate.send_signal(signal.SIGSTOP)

    def resume_gate(self) -> None:
        assert self.gate is not None
        self.gate.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
            for pipe in (agent.stdin, agent.stdout):
                if pipe is not None:
                    pipe.close()
        if self.gate is not None:
            self.resume_gate()  # a paused Gate cannot be stopped
        if self.kamailio is not None and self.kamailio.poll() is None:
            self.kamailio.terminate()
            try:
                self.kamailio.wait(10)
            except subprocess.TimeoutExpired:
                self.kamailio.kill()
                self.kamailio.wait(10)
        self.stop_gate()
        if self.redis is not None:
            self.redis.stop()

    def callee(
        self, register: bool = False, plan: list[dict[str, Any]] | None = None
    ) -> subprocess.Popen[str]:
        """The callee's phone (user 14155550123); `register`: registered with the proxy,
        and then it may also make the calls of `plan`."""
        proxy = [f"127.0.0.1:{self.sip_port}"] if register else []
        if proxy and plan:
            proxy.append(json.dumps(plan))
        agent = subprocess.Popen(
            [sys.executable, "-m", "tests.sip_ua", "uas", str(self.callee_port), *proxy],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.agents.append(agent)
        assert agent.stdout is not None
        while '"ready"' not in (line := agent.stdout.readline()):  # pjsua2 may print a banner
            assert agent.poll() is None and line, "the callee user agent died (or its REGISTER)"
        return agent

    def caller(
        self, plan: list[dict[str, Any]], carrier: bool = False, register: bool = False
    ) -> subprocess.Popen[str]:
        """The caller's phone (user 14155550100) making the calls of `plan`; `register`:
        registered with the proxy (which is then its domain, not an outbound proxy)."""
        port = self.carrier_port if carrier else free_udp_tcp_port()
        for item in plan:
            item.setdefault("to", f"sip:14155550123@127.0.0.1:{self.callee_port}")
        agent = subprocess.Popen(
            [sys.executable, "-m", "tests.sip_ua", "uac", str(port),
             f"127.0.0.1:{self.sip_port}", json.dumps(plan), *(["register"] * register)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.agents.append(agent)
        return agent

    # -- Gate's API --------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.gate_port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {key or self.workspace['key']}",
                     "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return {"status": err.code, **json.loads(err.read() or b"{}")}

    def set_balance(self, micros: int) -> None:
        wallet = self.api("GET", "/v1/wallet")
        delta = micros - wallet["balance_micros"]
        if delta:
            self.api("POST", f"/v1/workspaces/{self.workspace['id']}/adjustments",
                     {"amount_usd": f"{delta / 1e6:.6f}", "type": "adjustment",
                      "description": "e2e"}, PLATFORM_KEY)  # fmt: skip

    def http_ok(self, path: str, port: int | None = None, want: int = 200) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port or self.gate_port}{path}", timeout=1
            ) as resp:
                return bool(resp.status == want)
        except urllib.error.HTTPError as err:
            return err.code == want
        except OSError:
            return False

    def webhook(self, event: dict[str, Any], *, secret: str = SECRET,
                age_s: int = 0) -> tuple[int, str]:  # fmt: skip
        """POST an event to Kamailio's webhook endpoint, signed with `secret`, `age_s` old."""
        from datetime import UTC, datetime

        from standardwebhooks.webhooks import Webhook

        body = json.dumps(event)
        signed_at = datetime.fromtimestamp(int(time.time()) - age_s, UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": event["id"],
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": Webhook(secret).sign(event["id"], signed_at, body),
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/gate/events", data=body.encode(),
            headers=headers, method="POST",
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    @staticmethod
    def wait(check: Any, within: float, message: str) -> None:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(message)
            time.sleep(0.05)


def events_of(agent: subprocess.Popen[str], timeout: float = 120) -> list[dict[str, Any]]:
    """Every JSON line a caller printed, once it is done."""
    out, _ = agent.communicate(timeout=timeout)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


class Lines:
    """Collects a long-running agent's JSON lines in a thread (the callee never exits)."""

    def __init__(self, agent: subprocess.Popen[str]) -> None:
        import threading

        self.items: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, args=(agent,), daemon=True)
        self._thread.start()

    def ended(self, call_id: str, within: float = 5.0) -> int:
        """When this agent's leg of the call was disconnected (wall ms)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for e in list(self.items):
                if e["event"] == "disconnected" and e.get("call_id") == call_id:
                    return int(e["t_ms"])
            time.sleep(0.02)
        raise AssertionError(f"{call_id}: this leg got no BYE within {within} s")

    def _read(self, agent: subprocess.Popen[str]) -> None:
        assert agent.stdout is not None
        for line in agent.stdout:
            if line.startswith("{"):
                self.items.append(json.loads(line))


class LiveWatch:
    """Polls Gate's live calls every 50 ms: each call's last hangup_at_ms is when its money
    ran out (its cut), the zero the cut delay is measured from."""

    def __init__(self, stack: Stack) -> None:
        import threading

        self.stack = stack
        self.hangup_ms: dict[str, int] = {}
        self.limited: set[str] = set()
        self.history: dict[str, list[Any]] = {}
        self.live: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                live = self.stack.api("GET", "/v1/calls?state=live")
                self.live = {v["call_id"] for v in live.get("data", []) if v["state"] == "live"}
                for view in live.get("data", []):
                    self.hangup_ms[view["call_id"]] = view["hangup_at_ms"]
                    seen = self.history.setdefault(view["call_id"], [])
                    if not seen or seen[-1] != (view["hangup_at_ms"], view["cut_at"]):
                        seen.append((view["hangup_at_ms"], view["cut_at"]))
                    if view["cut_at"] is not None:
                        self.limited.add(view["call_id"])
            except (OSError, ValueError):
                pass  # Gate stopped on purpose
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

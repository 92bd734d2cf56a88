"""`gate switch-config kamailio` prints the shipped Kamailio config, and Kamailio accepts it."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gate.switch.config import render, template

KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
)
needs_kamailio = pytest.mark.skipif(
    KAMAILIO is None,
    reason="kamailio is not installed (make install installs the Debian packages kamailio, "
    "kamailio-extra-modules, -utils-modules, -json-modules, -tls-modules)",
)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_the_cli_prints_the_config_with_the_values_filled_in(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gate", "switch-config", "kamailio",
         "--gate-url", "http://gate.internal:8080/", "--key", "sw-key-123", "--secret", SECRET,
         "--workspace", "ws_0123456789abcdef", "--inbound-fail", "closed", "--sync-s", "3",
         "--node", "kam-a", "--carrier", "203.0.113.10:5060,198.51.100.0",
         "--carrier", "192.0.2.7:5080", "--registrar", "--state-db", str(tmp_path / "s.sqlite")],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    cfg = out.stdout
    assert cfg.startswith("#!KAMAILIO")
    assert '#!trydef GATE_URL "http://gate.internal:8080"' in cfg
    assert '#!trydef GATE_KEY "sw-key-123"' in cfg
    assert f'#!trydef GATE_SECRET "{SECRET}"' in cfg
    assert '#!trydef GATE_WORKSPACE "ws_0123456789abcdef"' in cfg
    assert "#!trydef INBOUND_FAIL_OPEN 0" in cfg
    assert "name=gsync;interval=3;" in cfg
    assert '#!trydef GATE_NODE "kam-a"' in cfg
    assert '#!trydef CARRIER_ADDR "203.0.113.10:5060,198.51.100.0,192.0.2.7:5080"' in cfg
    assert "#!trydef GATE_REGISTRAR 1" in cfg
    assert f'#!trydef GATE_STATE_DB "sqlite://{tmp_path}/s.sqlite"' in cfg
    assert "\n#!define GATE_PERSIST\n" in cfg
    with sqlite3.connect(tmp_path / "s.sqlite") as db:  # the dialog module's tables, made
        versions = dict(db.execute("select table_name, table_version from version"))
    assert versions == {"dialog": 7, "dialog_vars": 1}
    assert len(cfg.splitlines()) == len(template().splitlines())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"gate_url": "gate:8080"}, "--gate-url"),
        ({"secret": "plain"}, "whsec_"),
        ({"key": 'a"b'}, "--key"),
        ({"timeout_ms": 1500}, "--timeout-ms"),
        ({"sip_listen": "127.0.0.1"}, "--sip-listen"),
        ({"node": "kam a"}, "--node"),
        ({"carrier": "pbx.example:5060"}, "--carrier"),
        ({"carrier": "203.0.113.10:70000"}, "--carrier"),
        ({"carrier": " , "}, "--carrier"),
        ({"state_db": "gate-state.sqlite"}, "--state-db"),
    ],
)
def test_values_kamailio_cannot_take_are_refused(flags: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"gate_url": "http://g", "key": "k", "secret": SECRET} | flags
    with pytest.raises(ValueError, match=message):
        render(**values)  # type: ignore[arg-type]


@needs_kamailio
@pytest.mark.parametrize("fail", ["open", "closed"])
def test_kamailio_accepts_the_printed_config(tmp_path: Path, fail: str) -> None:
    cfg = tmp_path / "kamailio.cfg"
    out = subprocess.run(
        [sys.executable, "-m", "gate", "switch-config", "kamailio",
         "--gate-url", "http://127.0.0.1:18080", "--key", "sw-key", "--secret", SECRET,
         "--sip-listen", "udp:127.0.0.1:15060", "--http-listen", "tcp:127.0.0.1:15071",
         "--inbound-fail", fail, "--carrier", "203.0.113.10:5060,198.51.100.9",
         *(["--registrar", "--state-db", str(tmp_path / "s.sqlite")] if fail == "open" else [])],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    cfg.write_text(out.stdout)
    assert KAMAILIO is not None
    check = subprocess.run(
        [KAMAILIO, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert "ERROR" not in check.stderr and "CRITICAL" not in check.stderr, check.stderr[-3000:]


@needs_kamailio
def test_kamailio_accepts_the_config_as_shipped(tmp_path: Path) -> None:
    assert KAMAILIO is not None
    path = tmp_path / "kamailio.cfg"
    path.write_text(template())
    check = subprocess.run([KAMAILIO, "-c", "-f", str(path)], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]


@needs_kamailio
def test_kamailio_accepts_the_config_without_heartbeats(tmp_path: Path) -> None:
    """GATE_HEARTBEATS 0 (documented: a switch with thousands of calls) once named a route
    too, so the config it printed did not start."""
    assert KAMAILIO is not None
    path = tmp_path / "kamailio.cfg"
    path.write_text(template().replace("#!trydef GATE_HEARTBEATS 1", "#!trydef GATE_HEARTBEATS 0"))
    check = subprocess.run([KAMAILIO, "-c", "-f", str(path)], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]


def test_the_default_config_gives_gate_evidence_every_5_s() -> None:
    """A lost end is billed to the last evidence: the sync (each listed call is evidence) and
    the heartbeats run every 5 s by default (10 s billed a 5 s call 0 s), keepalives every
    10 s, and the proxy names its node when told."""
    cfg = render(gate_url="http://g", key="k", secret=SECRET)
    assert "name=gsync;interval=5;" in cfg
    assert "#!trydef GATE_HEARTBEATS 1" in cfg
    assert "#!trydef GATE_KA_S 5" in cfg
    assert '#!trydef GATE_NODE ""' in cfg

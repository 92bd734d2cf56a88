"""`gate switch-config kamailio`: print the shipped kamailio.cfg with the deployment's values.

The config keeps every value in a `#!trydef NAME value` line at its top (so the file as
shipped passes `kamailio -c`, and `kamailio -A` may still override a value); rendering
rewrites those lines, and the sync interval in its rtimer line.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import re
import sqlite3
import sys
from importlib import resources
from pathlib import Path

_VALUE = re.compile(r'^[^"\\\r\n]*$')


def template() -> str:
    return resources.files("gate.switch").joinpath("kamailio.cfg").read_text()


def _quoted(name: str, value: str) -> str:
    if not _VALUE.match(value):
        raise ValueError(f"{name} may not contain quotes, backslashes or line breaks")
    return f'"{value}"'


def carriers(values: str | list[str]) -> str:
    """The inbound source list for CARRIER_ADDR: each an IP address (any port) or an IPv4
    address:port, given comma-separated or as a list."""
    items = [values] if isinstance(values, str) else values
    found = [one.strip() for item in items for one in item.split(",") if one.strip()]
    if not found:
        raise ValueError("--carrier needs at least one address, e.g. 203.0.113.10:5060")
    for one in found:
        host, _, port = one.rpartition(":") if one.count(":") == 1 else ("", "", "")
        try:
            ipaddress.ip_address(host or one)
        except ValueError:
            raise ValueError(
                f"--carrier {one!r} is not an IP address or IPv4 address:port "
                "(Kamailio compares the INVITE's source address, not a name)"
            ) from None
        if host and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"--carrier {one!r}: the port must be 1 to 65535")
    return ",".join(found)


# The dialog module's tables (Kamailio 5.6, db_sqlite's dialog-create.sql, versions 7 and 1).
_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS version (id INTEGER PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL, table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT version_table_name_idx UNIQUE (table_name));
CREATE TABLE IF NOT EXISTS dialog (id INTEGER PRIMARY KEY NOT NULL,
    hash_entry INTEGER NOT NULL, hash_id INTEGER NOT NULL, callid VARCHAR(255) NOT NULL,
    from_uri VARCHAR(255) NOT NULL, from_tag VARCHAR(128) NOT NULL,
    to_uri VARCHAR(255) NOT NULL, to_tag VARCHAR(128) NOT NULL,
    caller_cseq VARCHAR(20) NOT NULL, callee_cseq VARCHAR(20) NOT NULL,
    caller_route_set VARCHAR(512), callee_route_set VARCHAR(512),
    caller_contact VARCHAR(255) NOT NULL, callee_contact VARCHAR(255) NOT NULL,
    caller_sock VARCHAR(64) NOT NULL, callee_sock VARCHAR(64) NOT NULL,
    state INTEGER NOT NULL, start_time INTEGER NOT NULL, timeout INTEGER DEFAULT 0 NOT NULL,
    sflags INTEGER DEFAULT 0 NOT NULL, iflags INTEGER DEFAULT 0 NOT NULL,
    toroute_name VARCHAR(32), req_uri VARCHAR(255) NOT NULL, xdata VARCHAR(512));
CREATE INDEX IF NOT EXISTS dialog_hash_idx ON dialog (hash_entry, hash_id);
CREATE TABLE IF NOT EXISTS dialog_vars (id INTEGER PRIMARY KEY NOT NULL,
    hash_entry INTEGER NOT NULL, hash_id INTEGER NOT NULL,
    dialog_key VARCHAR(128) NOT NULL, dialog_value VARCHAR(512) NOT NULL);
CREATE INDEX IF NOT EXISTS dialog_vars_hash_idx ON dialog_vars (hash_entry, hash_id);
INSERT OR IGNORE INTO version (table_name, table_version) VALUES ('dialog', 7);
INSERT OR IGNORE INTO version (table_name, table_version) VALUES ('dialog_vars', 1);
"""


def init_state_db(path: str) -> None:
    """Create the SQLite file with the dialog module's tables, if they are not there yet."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(_STATE_SCHEMA)


def render(
    *,
    gate_url: str,
    key: str,
    secret: str,
    workspace: str = "",
    sip_listen: str = "udp:127.0.0.1:5060",
    http_listen: str = "tcp:127.0.0.1:5071",
    carrier: str | list[str] = "203.0.113.10:5060",
    timeout_ms: int = 800,
    inbound_fail_open: bool = True,
    max_call_s: int = 14400,
    sync_s: int = 5,
    node: str = "",
    keepalive_s: int = 5,
    registrar: bool = False,
    state_db: str = "",
) -> str:
    """The config with these values; ValueError names a value Kamailio could not take."""
    if not gate_url.startswith(("http://", "https://")):
        raise ValueError("--gate-url must be an http:// or https:// URL")
    if not secret.startswith("whsec_"):
        raise ValueError("--secret must be the Standard Webhooks secret, whsec_...")
    if not 50 <= timeout_ms <= 900:
        raise ValueError("--timeout-ms must be 50 to 900: Kamailio's HTTP timeout is 1 s")
    if not 1 <= keepalive_s <= 3600:
        raise ValueError("--keepalive-s must be 1 to 3600 seconds")
    if node and not re.match(r"^[A-Za-z0-9._:@+-]{1,64}$", node):
        raise ValueError("--node must be 1 to 64 of A-Z a-z 0-9 . _ : @ + -")
    for name, listen in (("--sip-listen", sip_listen), ("--http-listen", http_listen)):
        if not re.match(r"^(udp|tcp|tls):[^\s\"]+:\d+$", listen):
            raise ValueError(f"{name} must look like proto:address:port")
    if state_db and not (state_db.startswith("/") and _VALUE.match(state_db)):
        raise ValueError("--state-db must be an absolute file path, e.g. "
                         "/var/lib/kamailio/gate-state.sqlite")  # fmt: skip
    values = {
        "GATE_URL": _quoted("--gate-url", gate_url.rstrip("/")),
        "GATE_KEY": _quoted("--key", key),
        "GATE_SECRET": _quoted("--secret", secret),
        "GATE_WORKSPACE": _quoted("--workspace", workspace),
        "SIP_LISTEN": sip_listen,
        "HTTP_LISTEN": http_listen,
        "CARRIER_ADDR": _quoted("--carrier", carriers(carrier)),
        "GATE_TIMEOUT_MS": str(timeout_ms),
        "INBOUND_FAIL_OPEN": "1" if inbound_fail_open else "0",
        "GATE_MAX_CALL_S": str(max_call_s),
        "GATE_NODE": _quoted("--node", node),
        "GATE_KA_S": str(keepalive_s),
        "GATE_REGISTRAR": "1" if registrar else "0",
    }
    if state_db:
        values["GATE_STATE_DB"] = f'"sqlite://{state_db}"'
        values["GATE_STATE_SQLCON"] = f'"gdb=>sqlite://{state_db}"'
    text = template()
    for name, value in values.items():
        line = f"#!trydef {name} {value}"
        text, count = re.subn(
            rf"^#!trydef {name} .*$",
            line.replace("\\", r"\\"),
            text,
            count=1,
            flags=re.MULTILINE,
        )
        assert count == 1, f"{name} is missing from the shipped kamailio.cfg"
    text, count = re.subn(r"name=gsync;interval=\d+;", f"name=gsync;interval={sync_s};", text)
    assert count == 1, "the sync timer is missing from the shipped kamailio.cfg"
    if state_db:
        text, count = re.subn(r"^##!define GATE_PERSIST$", "#!define GATE_PERSIST", text,
                              flags=re.MULTILINE)  # fmt: skip
        assert count == 1, "GATE_PERSIST is missing from the shipped kamailio.cfg"
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gate switch-config",
        description="Print a switch configuration that asks this Gate before every call.",
    )
    parser.add_argument("switch", choices=["kamailio"])
    parser.add_argument("--gate-url", required=True, help="Gate's base URL, e.g. http://gate:8080")
    parser.add_argument("--key", required=True, help="the switch key (GATE_SWITCH_KEY or one "
                        "workspace's switch key)")  # fmt: skip
    parser.add_argument("--secret", required=True, help="webhook secret, whsec_...")
    parser.add_argument("--workspace", default="", help="workspace_id to name in every start "
                        "(with the service-wide switch key)")  # fmt: skip
    parser.add_argument("--sip-listen", default="udp:127.0.0.1:5060")
    parser.add_argument("--http-listen", default="tcp:127.0.0.1:5071",
                        help="where Gate's webhooks arrive (path /gate/events)")  # fmt: skip
    parser.add_argument("--carrier", action="append",
                        help="where inbound calls come from: an IP address (any port) or "
                        "address:port, comma-separated or repeated (default "
                        "203.0.113.10:5060)")  # fmt: skip
    parser.add_argument("--registrar", action="store_true",
                        help="phones REGISTER with this proxy (in memory, no authentication) "
                        "and calls to user@proxy go where that user registered")  # fmt: skip
    parser.add_argument("--timeout-ms", type=int, default=800)
    parser.add_argument("--inbound-fail", choices=["open", "closed"], default="open")
    parser.add_argument("--max-call-s", type=int, default=14400)
    parser.add_argument("--sync-s", type=int, default=5,
                        help="call sync (and heartbeat) interval: a lost end is billed at "
                        "most this much short")  # fmt: skip
    parser.add_argument("--node", default="",
                        help="this proxy's name, when several share one switch key: its "
                        "syncs end only the calls it started")  # fmt: skip
    parser.add_argument("--keepalive-s", type=int, default=5,
                        help="OPTIONS to both legs of each call this often: a vanished phone's "
                        "call ends within this + 5 s")  # fmt: skip
    parser.add_argument("--state-db", default="", metavar="PATH",
                        help="keep calls across a restart of Kamailio in this SQLite file "
                        "(created with its tables if missing; needs kamailio-sqlite-modules "
                        "and write access for Kamailio's user)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        text = render(
            gate_url=args.gate_url,
            key=args.key,
            secret=args.secret,
            workspace=args.workspace,
            sip_listen=args.sip_listen,
            http_listen=args.http_listen,
            carrier=args.carrier or "203.0.113.10:5060",
            timeout_ms=args.timeout_ms,
            inbound_fail_open=args.inbound_fail == "open",
            max_call_s=args.max_call_s,
            sync_s=args.sync_s,
            node=args.node,
            keepalive_s=args.keepalive_s,
            registrar=args.registrar,
            state_db=args.state_db,
        )
        if args.state_db:
            init_state_db(args.state_db)
    except (ValueError, sqlite3.Error, OSError) as err:
        sys.stderr.write(f"gate switch-config: {err}\n")
        return 2
    sys.stdout.write(text)
    return 0

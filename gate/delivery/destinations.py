"""Where a tenant's webhooks may go: public addresses only, unless GATE_WEBHOOK_ALLOW_PRIVATE.

A workspace sets its own `switch_webhook_url`, and Gate POSTs to it from inside the
operator's network: a URL naming a loopback, private, link-local (the cloud metadata
service, 169.254.169.254), shared, multicast or otherwise non-global address would let a
tenant make Gate call into that network. It is checked twice:

- when the URL is set (`check_url`): an address literal or a `localhost` name is refused
  with a 400 at once (names are not resolved here: DNS may answer differently later);
- at every delivery (`PublicConnector`): every address the connector is about to connect
  to, whether resolved from a name or an address literal (which aiohttp does not resolve),
  must be public, checked on the very addresses the connection then uses, so DNS rebinding
  and host spellings the client normalises differently (IDNA/NFKC digits, decimal, octal
  and hex IPv4 forms) cannot slip through.

The host is normalised exactly as the HTTP client will (`normal_host`: yarl's IDNA
encoding, then inet_aton's reading of IPv4 shorthands) before it is checked.

The operator's own GATE_SWITCH_WEBHOOK_URL is trusted and not checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from aiohttp import TCPConnector
from aiohttp.abc import ResolveResult
from yarl import URL

from gate.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedDestination(OSError):
    """A webhook would go to a non-public address; the delivery fails as if unreachable."""


def non_public(address: str) -> str | None:
    """Why `address` (an IP literal) is not a public one, or None when it is."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (
        ("loopback", ip.is_loopback),
        ("link-local (cloud metadata lives here)", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return f"{ip} is a {kind} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def normal_host(url: str) -> str:
    """The host the HTTP client will connect to: yarl's IDNA/NFKC-normalised form (①②⑦ is
    127), and an IPv4 shorthand (2130706433, 0x7f.1, 0177.0.0.1) as the address the C
    resolver reads it as."""
    try:
        host = (URL(url).raw_host or "").lower().rstrip(".")
    except (ValueError, UnicodeError):
        return ""
    if host and all(ch in "0123456789abcdefx." for ch in host) and any(c.isdigit() for c in host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            pass
    return host


def _host(url: str) -> str:
    return normal_host(url)


def check_url(url: str, field: str = "switch_webhook_url") -> None:
    """Raise ValidationFailed when the URL plainly names a non-public host."""
    host = _host(url)
    reason = non_public(host)
    if reason is None and (host == "localhost" or host.endswith(".localhost")):
        reason = f"{host} is this machine"
    if not host:
        reason = "the URL names no host"
    if reason is not None:
        raise ValidationFailed(
            f"webhook URLs must reach a public address: {reason}; use your switch's public "
            "URL (the operator can allow private ones with GATE_WEBHOOK_ALLOW_PRIVATE)",
            field=field,
        )


def check_literal(url: str) -> None:
    """At delivery: raise RefusedDestination for a URL whose host is a non-public literal."""
    reason = non_public(_host(url))
    if reason is not None:
        raise RefusedDestination(f"refused to deliver: {reason}; set a public webhook URL")


class PublicConnector(TCPConnector):
    """A connector that connects to public addresses only: every address it is about to
    use, from a name or from an address literal, is checked at connect time."""

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        results = await super()._resolve_host(host, port, traces)
        for result in results:
            reason = non_public(result["host"])
            if reason is not None:
                raise RefusedDestination(
                    f"refused to deliver: {host} is {reason}; set a public webhook URL"
                )
        return results

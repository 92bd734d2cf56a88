"""Where a tenant's webhooks may go: public addresses only, unless GATE_WEBHOOK_ALLOW_PRIVATE.

A workspace sets its own `switch_webhook_url`, and Gate POSTs to it from inside the
operator's network: a URL naming a loopback, private, link-local (the cloud metadata
service, 169.254.169.254), shared, multicast or otherwise non-global address would let a
tenant make Gate call into that network. It is checked twice:

- when the URL is set (`check_url`): an address literal or a `localhost` name is refused
  with a 400 at once (names are not resolved here: DNS may answer differently later);
- at every delivery (`PublicResolver`, and `check_literal` for address literals, which
  aiohttp does not resolve): every address the name resolves to must be public, checked on
  the very addresses the connection then uses, so DNS rebinding cannot slip through.

The operator's own GATE_SWITCH_WEBHOOK_URL is trusted and not checked.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

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


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def check_url(url: str, field: str = "switch_webhook_url") -> None:
    """Raise ValidationFailed when the URL plainly names a non-public host."""
    host = _host(url)
    reason = non_public(host)
    if reason is None and (host == "localhost" or host.endswith(".localhost")):
        reason = f"{host} is this machine"
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


class PublicResolver(AbstractResolver):
    """aiohttp's resolver, refusing a name when any of its addresses is not public."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = non_public(result["host"])
            if reason is not None:
                raise RefusedDestination(
                    f"refused to deliver: {host} resolves to {reason}; set a public webhook URL"
                )
        return results

    async def close(self) -> None:
        await self._inner.close()

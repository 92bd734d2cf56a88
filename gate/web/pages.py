"""Handlers that serve the billing page and its assets (package data), with a strict CSP.

The page is plain HTML with small ES modules and no build step: a few hundred lines of
JavaScript do not need a bundler, and a page with no third-party code is easy to audit.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from gate.errors import NotFound

# No inline script or style, no other origin: the page talks to this Gate and nothing else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


@cache
def assets() -> dict[str, tuple[bytes, str]]:
    """Every file of gate/web/static by name, read once: (content, content type)."""
    found: dict[str, tuple[bytes, str]] = {}
    for item in resources.files("gate.web").joinpath("static").iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in _TYPES:
            found[item.name] = (item.read_bytes(), _TYPES[suffix])
    return found


def _serve(name: str, cache_control: str) -> web.Response:
    try:
        body, content_type = assets()[name]
    except KeyError:
        raise NotFound(f"no billing page asset {name!r}; open /billing") from None
    return web.Response(
        body=body,
        content_type=content_type,
        charset="utf-8",
        headers={**SECURITY_HEADERS, "Cache-Control": cache_control},
    )


async def billing(request: web.Request) -> web.StreamResponse:
    """GET /billing: the page; the key a person pastes stays in the tab's sessionStorage."""
    return _serve("billing.html", "no-store")


async def asset(request: web.Request) -> web.StreamResponse:
    """GET /billing/assets/{name}: one script or stylesheet of the page."""
    # no-cache: the browser revalidates, so a new Gate version's page never runs old modules.
    return _serve(request.match_info["name"], "no-cache")

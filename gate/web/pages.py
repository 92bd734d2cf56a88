"""Handlers that serve the billing page and its assets (package data), with a strict CSP.

The page is plain HTML with small ES modules and no build step: a few hundred lines of
JavaScript do not need a bundler, and a page with no third-party code is easy to audit.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes  # compressed once at start: every request after that is a lookup
    content_type: str
    etag: str  # of the content: a browser's copy is checked with one small 304


@cache
def assets() -> dict[str, Asset]:
    """Every file of gate/web/static by name, read and compressed once."""
    found: dict[str, Asset] = {}
    for item in resources.files("gate.web").joinpath("static").iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in _TYPES:
            body = item.read_bytes()
            tag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            found[item.name] = Asset(body, gzip.compress(body, 9, mtime=0), _TYPES[suffix], tag)
    return found


def _serve(request: web.Request, name: str, cache_control: str) -> web.Response:
    try:
        item = assets()[name]
    except KeyError:
        raise NotFound(f"no billing page asset {name!r}; open /billing") from None
    headers = {**SECURITY_HEADERS, "Cache-Control": cache_control, "Vary": "Accept-Encoding"}
    if cache_control != "no-store":
        headers["ETag"] = item.etag
        wanted = request.headers.get("If-None-Match", "")
        if item.etag in (tag.strip().removeprefix("W/") for tag in wanted.split(",")):
            return web.Response(status=304, headers=headers)
    body = item.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = item.gzipped
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, content_type=item.content_type, charset="utf-8", headers=headers)


async def billing(request: web.Request) -> web.StreamResponse:
    """GET /billing: the page; the key a person pastes stays in the tab's sessionStorage."""
    return _serve(request, "billing.html", "no-store")


async def asset(request: web.Request) -> web.StreamResponse:
    """GET /billing/assets/{name}: one script, stylesheet or worker of the page."""
    # no-cache + ETag: the browser keeps its copy and revalidates it with a 304, so a new Gate
    # version's page never runs old modules and an unchanged one costs no bytes.
    return _serve(request, request.match_info["name"], "no-cache")

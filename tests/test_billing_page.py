"""The billing page as served: strict headers, package-data assets, nothing from elsewhere."""

from __future__ import annotations

import re

from gate.web import pages
from tests.conftest import Client

ASSETS = ("app.js", "api.js", "live.js", "chart.js", "format.js", "people.js", "billing.css",
          "connection.js", "events-worker.js", "details.js", "words.js")  # fmt: skip


async def test_page_has_a_strict_content_security_policy(client: Client) -> None:
    resp = await client.get("/billing")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src"):
        assert directives[name] == "'self'", csp  # no inline code, no other origin
    assert directives["frame-ancestors"] == "'none'"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    html = await resp.text()
    assert '<script type="module" src="/billing/assets/app.js">' in html
    assert "<style" not in html and " style=" not in html  # the CSP would block them
    assert not re.search(r"<script>(?!</script>)", html)


async def test_assets_are_served_with_their_types(client: Client) -> None:
    for name in ASSETS:
        resp = await client.get(f"/billing/assets/{name}")
        assert resp.status == 200, name
        expected = "text/css" if name.endswith(".css") else "text/javascript"
        assert resp.content_type == expected
        assert "Content-Security-Policy" in resp.headers
    assert set(ASSETS) | {"billing.html"} == set(pages.assets())


async def test_unknown_asset_is_a_json_404(client: Client) -> None:
    for path in ("/billing/assets/nope.js", "/billing/assets/..%2Fpages.py", "/billing/x"):
        resp = await client.get(path)
        assert resp.status == 404, path
        body = await resp.json()
        assert body["error"]["code"] == "not_found"
        assert body["error"]["message"]


def test_no_asset_names_another_origin() -> None:
    """Fonts, scripts and styles all come from Gate: no URL of another host in any asset."""
    for name, item in pages.assets().items():
        text = item.body.decode()
        # The SVG namespace is a name, not a request.
        hosts = set(re.findall(r"(?:https?:)?//([\w.-]+\.[a-z]{2,})", text)) - {"www.w3.org"}
        assert not hosts, (name, hosts)
        assert "document.cookie" not in text, name
        # localStorage outlives the tab: it may hold a dismissed alert's marker, never the key.
        for line in text.splitlines():
            if "localStorage" in line:
                assert "key" not in line.lower().replace("dismissed", ""), (name, line)


def test_key_is_kept_only_in_session_storage() -> None:
    api = pages.assets()["api.js"].body.decode()
    assert "sessionStorage.setItem" in api
    app = pages.assets()["app.js"].body.decode()
    # The key travels in the Authorization header, never in a query string.
    assert "Authorization" in api and "key=" not in app + api


async def test_assets_are_compressed_and_revalidated_with_an_etag(client: Client) -> None:
    resp = await client.get("/billing/assets/app.js", headers={"Accept-Encoding": "gzip"})
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["Vary"] == "Accept-Encoding"
    etag = resp.headers["ETag"]
    body = await resp.read()  # aiohttp decompresses
    assert body == pages.assets()["app.js"].body
    assert len(pages.assets()["app.js"].gzipped) < len(body) / 2
    again = await client.get("/billing/assets/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    stale = await client.get("/billing/assets/app.js", headers={"If-None-Match": '"old"'})
    assert stale.status == 200
    # The page itself is never stored: it is what names the current assets.
    page = await client.get("/billing")
    assert "ETag" not in page.headers and page.headers["Cache-Control"] == "no-store"

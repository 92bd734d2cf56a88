"""The billing page as served: strict headers, package-data assets, nothing from elsewhere."""

from __future__ import annotations

import re

from gate.web import pages
from tests.conftest import Client

ASSETS = ("app.js", "api.js", "live.js", "chart.js", "format.js", "people.js", "billing.css")


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
    for name, (body, _type) in pages.assets().items():
        text = body.decode()
        # The SVG namespace is a name, not a request.
        hosts = set(re.findall(r"(?:https?:)?//([\w.-]+\.[a-z]{2,})", text)) - {"www.w3.org"}
        assert not hosts, (name, hosts)
        assert "localStorage" not in text and "document.cookie" not in text, name


def test_key_is_kept_only_in_session_storage() -> None:
    api = pages.assets()["api.js"][0].decode()
    assert "sessionStorage.setItem" in api
    app = pages.assets()["app.js"][0].decode()
    # The key travels in the Authorization header, never in a query string.
    assert "Authorization" in api and "key=" not in app + api

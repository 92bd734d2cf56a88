"""The billing page in a real browser: Debian's chromium, driven by Playwright, against a real
Gate listening on a TCP port with the test redis-server.

Screenshots of both views at desktop and phone width go to docs/screenshots/ (cleaned at the
start of this module, ignored by git; the README's two pictures are copies in docs/).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import unused_port
from redis.asyncio import Redis

from gate.app import create_app
from gate.clock import ManualClock
from gate.settings import Settings
from gate.store import keys
from tests.conftest import PLATFORM, assert_invariants, auth

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
MINUS = "\u2212"  # the page writes debits with a real minus sign
WAIT_MS = 10_000  # generous: two cores shared with other work

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium not found: `make install` installs it with apt-get"
    ),
]

if CHROMIUM is not None:
    from playwright.async_api import Browser, Page, async_playwright, expect


class LiveGate:
    """A Gate on a real port, which a test can stop and start again (a restart)."""

    def __init__(self, settings: Settings, clock: ManualClock) -> None:
        self.settings = settings
        self.clock = clock
        self.port = unused_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner = web.AppRunner(create_app(self.settings, clock=self.clock), shutdown_timeout=1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def api(
        self, method: str, path: str, key: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        headers = auth(key) if key else PLATFORM
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, headers=headers, **kwargs) as resp,
        ):
            assert resp.status < 300, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body

    async def refusal(self, method: str, path: str, key: str, **kwargs: Any) -> str:
        """The message of the 4xx Gate answers to this request (which changes nothing)."""
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, headers=auth(key), **kwargs) as resp,
        ):
            assert 400 <= resp.status < 500, await resp.text()
            message: str = (await resp.json())["error"]["message"]
            return message


@pytest.fixture(scope="module", autouse=True)
def screenshots() -> Path:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    return SHOTS


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # Playwright gives every launch a fresh temporary user-data-dir.
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        await chromium.close()


@pytest.fixture
async def gate(settings: Settings, redis: Redis) -> AsyncIterator[LiveGate]:
    before = await redis.smembers(keys.WORKSPACES)
    # Three days ago, so the usage chart has days to show as the test moves the clock on.
    live = LiveGate(settings, ManualClock(time.time_ns() // 1_000_000 - 3 * 86_400_000))
    await live.start()
    yield live
    await live.stop()
    await assert_invariants(redis, before)


class Watched:
    """A page, and everything it asked for or complained about."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.requests: list[str] = []
        self.problems: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on(
            "console",
            lambda m: (
                self.problems.append(m.text)
                if m.type == "error" and "Content Security Policy" in m.text
                else None
            ),
        )

    def check(self) -> None:
        outside = [
            u for u in self.requests if not u.startswith((self.origin + "/", "data:", "blob:"))
        ]
        assert not outside, f"requests to other origins: {outside}"
        assert not self.problems, self.problems


@pytest_asyncio.fixture
async def page(browser: Browser, gate: LiveGate) -> AsyncIterator[Watched]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    watched = Watched(await context.new_page(), gate.url)
    watched.page.set_default_timeout(WAIT_MS)
    yield watched
    await context.close()
    watched.check()


async def sign_in(page: Page, url: str, key: str) -> None:
    await page.goto(url + "/billing")
    await page.get_by_label("API key", exact=True).fill(key)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await expect(page.locator("#app")).to_be_visible()


async def call(gate: LiveGate, switch: str, call_id: str, seconds: int, **who: str) -> None:
    """A call from start to end over the switch API, `seconds` long on the gate's clock."""
    body = {"call_id": call_id, "direction": "outbound", "from": "+14155550100",
            "to": "+14155550123"} | who  # fmt: skip
    await gate.api("POST", "/v1/calls", switch, json=body)
    gate.clock.advance(seconds)
    await gate.api("POST", f"/v1/calls/{call_id}/end", switch, json={"duration_s": seconds})


async def test_admin_wallet_live_and_usage(page: Watched, gate: LiveGate) -> None:
    p = page.page
    ws = await gate.api("POST", "/v1/workspaces", json={"name": "Acme Voice"})
    # Switch keys are the platform's to issue (DESIGN §3/§9).
    switch = await gate.api("POST", f"/v1/workspaces/{ws['id']}/keys", json={"role": "switch"})
    # A wrong key: a clear sign-in error, nothing else shown.
    await p.goto(gate.url + "/billing")
    await p.get_by_label("API key", exact=True).fill(f"gk_{ws['id']}_not-a-real-secret")
    await p.get_by_role("button", name="Sign in", exact=True).click()
    await expect(p.locator("#signin-error")).to_contain_text("not accepted")
    await expect(p.locator("#app")).to_be_hidden()

    await sign_in(p, gate.url, ws["key"])
    await expect(p.locator("#balance")).to_have_text("$10.00")
    await expect(p.locator("#who")).to_contain_text("Acme Voice · admin key")
    await expect(p.locator("#live")).to_have_text("Live")
    # The key lives in this tab's sessionStorage only: no cookie, no URL.
    assert await p.evaluate("sessionStorage.getItem('gate.billing.key')") == ws["key"]
    assert await p.context.cookies() == []
    assert all(ws["key"] not in u for u in page.requests)

    # No method on file and none typed, then a declined card: the API's message, no charge.
    topup_form = p.locator("#topup-form")
    await p.get_by_role("button", name="$25", exact=True).click()
    no_method = await gate.refusal("POST", "/v1/wallet/topup", ws["key"], json={"amount_usd": "25"})
    await p.locator("#topup-submit").click()
    await expect(topup_form).to_contain_text(no_method)
    await p.get_by_label("Payment method", exact=True).fill("pm_card_chargeDeclined")
    await p.locator("#topup-submit").click()
    await expect(p.locator("#err-topup")).to_contain_text("declined")
    await expect(p.locator("#balance")).to_have_text("$10.00")

    # Top up $25 with a preset: the balance and a new row appear.
    await p.get_by_label("Payment method", exact=True).fill("pm_card_visa")
    await p.locator("#topup-submit").click()
    await expect(p.locator("#balance")).to_have_text("$35.00")
    first_row = p.locator("#tx-table tbody tr").first
    await expect(first_row).to_contain_text("Recharge")
    await expect(first_row).to_contain_text("+$25.00")
    await expect(first_row).to_contain_text("$35.00")

    # A double click charges once.
    await p.get_by_role("button", name="$10", exact=True).click()
    await p.locator("#topup-submit").dblclick()
    await expect(p.locator("#balance")).to_have_text("$45.00")
    await p.wait_for_timeout(500)
    recharges = await gate.api("GET", "/v1/wallet/transactions?type=recharge", ws["key"])
    assert len(recharges["data"]) == 2
    assert (await gate.api("GET", "/v1/wallet", ws["key"]))["balance_micros"] == 45_000_000

    # Out of range or too precise: the API's own message beside the field, nothing charged.
    for amount in ("0.5", "1000.01", "12.3456789"):
        expected = await gate.refusal(
            "POST", "/v1/wallet/topup", ws["key"],
            json={"amount_usd": amount, "payment_method_id": "pm_card_visa"},
        )  # fmt: skip
        await p.get_by_label("Amount in USD ($1 to $1,000)", exact=True).fill(amount)
        await p.locator("#topup-submit").click()
        await expect(p.locator("#err-amount_usd")).to_have_text(expected)
    await p.get_by_label("Amount in USD ($1 to $1,000)", exact=True).fill("")
    await expect(p.locator("#err-amount_usd")).to_have_text("")  # editing clears the old error
    assert (await gate.api("GET", "/v1/wallet", ws["key"]))["balance_micros"] == 45_000_000

    # Settings: the API's validation message beside its field, then a low-balance alert.
    await p.get_by_label("Recharge automatically", exact=True).check()
    await p.get_by_label("Recharge when below (USD)", exact=True).fill("5")
    await p.get_by_label("Recharge amount (USD)", exact=True).fill("5000")
    await p.get_by_role("button", name="Save settings", exact=True).click()
    await expect(p.locator("[id='err-auto_recharge.topup_usd']")).to_contain_text("topup_usd")
    await p.get_by_label("Recharge automatically", exact=True).uncheck()
    await p.get_by_label("Recharge amount (USD)", exact=True).fill("25")
    await p.get_by_label("Email me when the balance is low", exact=True).check()
    await p.get_by_label("Alert when below (USD)", exact=True).fill("40")
    await p.locator("#lb-email").fill("ops@acme.test")  # required while alerts are on
    await p.get_by_role("button", name="Save settings", exact=True).click()
    await expect(p.locator("#settings-result")).to_have_text("Settings saved.")
    await expect(p.locator("#low-bar")).to_be_hidden()

    # A call started over the API shows up live; its cost lands in the list; crossing the
    # alert threshold turns the bar red.
    body = {"call_id": "c1", "direction": "outbound", "from": "+14155550100",
            "to": "+14155550123", "user": "alice", "group": "sales"}  # fmt: skip
    await gate.api("POST", "/v1/calls", switch["key"], json=body)
    await expect(p.locator("#live-calls")).to_have_text("1")
    await expect(p.locator("#reserved")).to_have_text("$0.20")
    gate.clock.advance(1800)
    await gate.api("POST", "/v1/calls/c1/end", switch["key"], json={"duration_s": 1800})
    await expect(first_row).to_contain_text(f"{MINUS}$6.00")
    await expect(first_row).to_contain_text("Call")
    await expect(p.locator("#balance")).to_have_text("$39.00")
    await expect(p.locator("#low-bar")).to_be_visible()
    await expect(p.locator("#low-bar")).to_contain_text("below your alert threshold of $40.00")
    assert await p.locator("#low-bar").evaluate("e => getComputedStyle(e).backgroundColor") == (
        "rgb(180, 35, 24)"
    )
    await expect(p.locator("#live-calls")).to_have_text("0")
    await expect(p.locator("#events")).to_contain_text(f"Call {MINUS}$6.00")
    await call(gate, switch["key"], "c2", 60, user="bob", group="support")
    await expect(first_row).to_contain_text(f"{MINUS}$0.20")
    # Two more days of usage, one of them an AI agent's, for the chart.
    gate.clock.advance(86400)
    await call(gate, switch["key"], "a1", 300, user="alice", group="sales", service="ai_agent")
    gate.clock.advance(86400)
    await call(gate, switch["key"], "c3", 120, user="bob", group="support")
    await expect(first_row).to_contain_text(f"{MINUS}$0.40")
    await expect(p.locator("#balance")).to_have_text("$33.95")  # 38.80 - 4.45 - 0.40
    await p.screenshot(path=SHOTS / "wallet-desktop.png", full_page=True)
    await phone_screenshot(p, "wallet-phone.png")
    await p.set_viewport_size({"width": 1280, "height": 900})

    # Usage: every row, a chart, filters that narrow, a CSV with the table's rows.
    await p.get_by_role("button", name="Usage history", exact=True).click()
    usage_rows = p.locator("#usage-table tbody tr")
    await expect(usage_rows).to_have_count(7)  # signup credit, 2 recharges, 4 calls
    # One bar per day and service: calls on day 1, the agent on day 2, a call on day 3.
    bars = p.locator("#chart svg rect.bar")
    await expect(bars).to_have_count(3)
    assert await bars.evaluate_all("bs => bs.map(b => b.dataset.service)") == [
        "call",
        "ai_agent",
        "call",
    ]
    await expect(p.locator("#chart-legend")).to_contain_text("Calling: $6.60")
    await expect(p.locator("#chart-legend")).to_contain_text("AI agent: $4.45")
    await p.screenshot(path=SHOTS / "usage-desktop.png", full_page=True)
    await phone_screenshot(p, "usage-phone.png")
    await p.set_viewport_size({"width": 1280, "height": 900})
    await p.get_by_label("User", exact=True).fill("alice")
    await p.get_by_role("button", name="Apply filters", exact=True).click()
    await expect(usage_rows).to_have_count(2)
    await expect(usage_rows.first).to_contain_text("AI agent")
    await expect(p.locator("#chart-legend")).to_contain_text("Calling: $6.00")
    await p.get_by_label("User", exact=True).fill("")
    await p.get_by_label("Service", exact=True).select_option("calling")
    await p.get_by_role("button", name="Apply filters", exact=True).click()
    await expect(usage_rows).to_have_count(3)
    await expect(bars).to_have_count(2)
    async with p.expect_download() as info:
        await p.get_by_role("button", name="Export CSV", exact=True).click()
    download = await info.value
    today = time.strftime("%Y-%m-%d", time.gmtime(gate.clock.now_ms() / 1000))
    assert download.suggested_filename == f"usage-history-{today}.csv"
    text = await asyncio.to_thread(Path(await download.path()).read_text)
    exported = list(csv.DictReader(io.StringIO(text)))
    shown = await usage_rows.evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert [r["id"] for r in exported] == shown
    assert {r["user"] for r in exported} == {"alice", "bob"}


async def phone_screenshot(p: Page, name: str) -> None:
    """At 360 px nothing but the tables' own scroll areas may be wider than the screen."""
    await p.set_viewport_size({"width": 360, "height": 780})
    await p.wait_for_timeout(300)  # the chart redraws at its new width
    assert await p.evaluate("document.documentElement.scrollWidth") <= 360
    await p.screenshot(path=SHOTS / name, full_page=True)


async def test_agent_key_sees_the_wallet_not_the_top_up(page: Watched, gate: LiveGate) -> None:
    p = page.page
    ws = await gate.api("POST", "/v1/workspaces", json={"name": "Agents Inc"})
    keys_path = f"/v1/workspaces/{ws['id']}/keys"
    agent = await gate.api("POST", keys_path, ws["key"], json={"role": "agent"})
    # Keyboard only: the skip link, then the key field; Enter signs in.
    await p.goto(gate.url + "/billing")
    await p.keyboard.press("Tab")
    await p.keyboard.press("Tab")
    assert await p.evaluate("document.activeElement.id") == "key"
    await p.keyboard.type(agent["key"])
    await p.keyboard.press("Enter")
    await expect(p.locator("#balance")).to_have_text("$10.00")
    await expect(p.locator("#who")).to_contain_text("agent key")
    await expect(p.locator("#tx-table tbody tr")).to_have_count(1)
    for hidden in ("#topup-form", "#settings-form", "#export"):
        await expect(p.locator(hidden)).to_be_hidden()
    await expect(p.locator("#role-note")).to_contain_text("need an admin key")
    for _ in range(10):  # Tab through the header to the view tabs
        await p.keyboard.press("Tab")
        if await p.evaluate("document.activeElement.id") == "tab-usage":
            break
    await p.keyboard.press("Enter")
    await expect(p.locator("#usage-table tbody tr")).to_have_count(1)
    await expect(p.get_by_role("button", name="Export CSV", exact=True)).to_have_count(0)


async def test_reconnects_when_gate_restarts(page: Watched, gate: LiveGate) -> None:
    p = page.page
    ws = await gate.api("POST", "/v1/workspaces", json={"name": "Restart Ltd"})
    await sign_in(p, gate.url, ws["key"])
    await expect(p.locator("#live")).to_have_text("Live")
    await gate.stop()
    await expect(p.locator("#live")).to_have_text("Reconnecting…")
    await gate.start()
    await expect(p.locator("#live")).to_have_text("Live", timeout=20_000)
    await gate.api(
        "POST",
        "/v1/wallet/topup",
        ws["key"],
        json={"amount_usd": 50, "payment_method_id": "pm_card_visa"},
    )
    await expect(p.locator("#tx-table tbody tr").first).to_contain_text("+$50.00")
    await expect(p.locator("#balance")).to_have_text("$60.00")
    # A reload keeps the session (sessionStorage), and signing out forgets the key.
    await p.reload()
    await expect(p.locator("#balance")).to_have_text("$60.00")
    await p.get_by_role("button", name="Sign out", exact=True).click()
    await expect(p.locator("#signin")).to_be_visible()
    assert await p.evaluate("sessionStorage.length") == 0


async def test_cut_and_empty_wallet_show_live(
    page: Watched, gate: LiveGate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    p = page.page
    ws = await gate.api("POST", "/v1/workspaces", json={"name": "Thin Margins"})
    keys_path = f"/v1/workspaces/{ws['id']}/keys"
    switch = await gate.api("POST", keys_path, json={"role": "switch"})
    adjust = {"amount_usd": "-9.70", "type": "adjustment", "description": "test: leave $0.30"}
    await gate.api("POST", f"/v1/workspaces/{ws['id']}/adjustments", json=adjust)
    await sign_in(p, gate.url, ws["key"])
    await expect(p.locator("#balance")).to_have_text("$0.30")
    await expect(p.locator("#live")).to_have_text("Live")
    body = {"call_id": "short", "direction": "outbound", "from": "+14155550100",
            "to": "+14155550123"}  # fmt: skip
    await gate.api("POST", "/v1/calls", switch["key"], json=body)
    # $0.30 pays 90 s at $0.20/min: the ticker cuts the call at 90 s on the gate's clock.
    gate.clock.advance(60)
    await expect(p.locator("#available")).to_have_text("$0.00")
    gate.clock.advance(40)
    await expect(p.locator("#events")).to_contain_text("Call short cut (balance)")
    await gate.api("POST", "/v1/calls/short/end", switch["key"], json={"duration_s": 90})
    await expect(p.locator("#tx-table tbody tr").first).to_contain_text(f"{MINUS}$0.30")
    await expect(p.locator("#balance")).to_have_text("$0.00")
    await expect(p.locator("#low-bar")).to_contain_text("No money available")
    assert '"GET /billing HTTP/1.1" 200' in caplog.text  # the access log was captured...
    assert ws["key"] not in caplog.text  # ...and the key is in no log line, not even DEBUG


async def test_load_more_follows_the_cursor_without_gaps(page: Watched, gate: LiveGate) -> None:
    p = page.page
    ws = await gate.api("POST", "/v1/workspaces", json={"name": "Busy Desk"})

    async def adjustments(first: int, count: int) -> None:
        for n in range(first, first + count):
            body = {"amount_usd": "0.01", "type": "adjustment", "description": f"credit {n}"}
            await gate.api("POST", f"/v1/workspaces/{ws['id']}/adjustments", json=body)

    async def ids_shown() -> list[str]:
        rows = p.locator("#tx-table tbody tr")
        shown: list[str] = await rows.evaluate_all("rows => rows.map(r => r.dataset.id)")
        return shown

    async def ids_in_ledger() -> list[str]:
        rows = await gate.api("GET", "/v1/wallet/transactions?limit=200", ws["key"])
        return [r["id"] for r in rows["data"]]

    await adjustments(1, 24)  # 25 rows with the signup credit: more than one page of 20
    await sign_in(p, gate.url, ws["key"])
    await expect(p.locator("#tx-table tbody tr")).to_have_count(20)
    await p.get_by_role("button", name="Load more", exact=True).click()
    await expect(p.locator("#tx-table tbody tr")).to_have_count(25)
    await expect(p.get_by_role("button", name="Load more", exact=True)).to_be_hidden()
    assert await ids_shown() == await ids_in_ledger()
    # More new rows than a page arrive at once: the list starts over instead of leaving a gap.
    await adjustments(25, 22)
    await expect(p.locator("#tx-table tbody tr").first).to_contain_text("credit 46")
    await expect(p.locator("#balance")).to_have_text("$10.46")
    shown = await ids_shown()
    assert shown == (await ids_in_ledger())[: len(shown)]
    assert len(set(shown)) == len(shown)


async def test_a_sign_in_link_signs_a_person_in_and_shows_the_activity(
    page: Watched, gate: LiveGate
) -> None:
    p = page.page
    ws = await gate.api("POST", "/v1/workspaces", json={"name": "People Inc"})
    link = await gate.api("POST", f"/v1/workspaces/{ws['id']}/signin-links",
                          json={"person": "alice@example.com", "base_url": gate.url})  # fmt: skip
    await gate.api("PATCH", "/v1/workspace", ws["key"], json={"inbound_grace_s": 9})
    await p.goto(link["url"])
    await expect(p.locator("#who")).to_contain_text("alice@example.com, admin key")
    assert "signin=" not in p.url  # the token left the address bar
    rows = p.locator("#activity-table tbody tr")
    await expect(rows.first).to_contain_text("key.created")  # Alice's own key, newest first
    await expect(rows.first).to_contain_text("alice@example.com")
    await expect(p.locator("#activity-table")).to_contain_text("inbound_grace_s: \u2013 \u2192 9")
    # The link is used up: opened again, it says so and signs nobody in.
    await p.evaluate("sessionStorage.clear()")
    await p.goto("about:blank")  # a real load, not a jump to the link's fragment
    await p.goto(link["url"])
    await expect(p.locator("#signin-error")).to_contain_text("used already or has expired")
    await expect(p.locator("#app")).to_be_hidden()

"""The billing page in a real browser: Debian's chromium, driven by Playwright, against a real
Gate listening on a TCP port with the test redis-server.

Each test walks some of the 29 tasks of ../shared/page-tasks.md (numbered in comments as
"task N") and asserts what a person sees. axe-core checks the main states. Screenshots go to
docs/screenshots/ (cleaned at the start of this module, ignored by git; the pictures in docs/
are copies).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
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
from gate.store.redis_proc import RedisServer
from tests.conftest import PLATFORM, assert_invariants, auth
from tests.test_plans import CARD

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
MINUS = "\u2212"  # the page writes debits with a real minus sign
WAIT_MS = 10_000  # generous: two cores shared with other work
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium not found: `make install` installs it with apt-get"
    ),
]

if CHROMIUM is not None:
    from axe_playwright_python.async_playwright import Axe
    from playwright.async_api import Browser, Page, async_playwright, expect


class LiveGate:
    """A Gate on a real port, which a test can stop and start again (a restart). It counts
    the event streams browsers open (one per browser, however many tabs)."""

    def __init__(self, settings: Settings, clock: ManualClock) -> None:
        self.settings = settings
        self.clock = clock
        self.port = unused_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runner: web.AppRunner | None = None
        self.streams_opened = 0

    async def start(self) -> None:
        app = create_app(self.settings, clock=self.clock)

        @web.middleware
        async def count_streams(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path == "/v1/events":
                self.streams_opened += 1
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(count_streams)
        self.runner = web.AppRunner(app, shutdown_timeout=1)
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
            body: dict[str, Any] = await resp.json() if resp.status != 204 else {}
            return body

    async def text(self, path: str, key: str) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + path, headers=auth(key)) as resp,
        ):
            assert resp.status == 200
            return await resp.text()


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
def rated(settings: Settings, tmp_path: Path) -> Settings:
    """The settings with a rate card that has plans (allowances and a commitment)."""
    path = tmp_path / "plans.toml"
    path.write_text(CARD)
    return replace(settings, rates=str(path))


@pytest.fixture
async def gate(rated: Settings, redis: Redis) -> AsyncIterator[LiveGate]:
    before = await redis.smembers(keys.WORKSPACES)
    # Three days ago, so the usage chart has days to show as the test moves the clock on.
    live = LiveGate(rated, ManualClock(time.time_ns() // 1_000_000 - 3 * 86_400_000))
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
    context = await browser.new_context(viewport=DESKTOP)
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


async def workspace(gate: LiveGate, name: str, **body: Any) -> tuple[dict[str, Any], str]:
    """A workspace ($10 signup credit) and a switch key for it."""
    ws = await gate.api("POST", "/v1/workspaces", json={"name": name, **body})
    switch = await gate.api("POST", f"/v1/workspaces/{ws['id']}/keys", json={"role": "switch"})
    return ws, switch["key"]


async def call(
    gate: LiveGate, switch: str, call_id: str, seconds: int, end: Any = None, **who: str
) -> None:
    """A call from start to end over the switch API, `seconds` long on the gate's clock;
    `end`: more of what the switch says at the end (quality, an AI agent's work)."""
    body = {"call_id": call_id, "direction": "outbound", "from": "+14155550100",
            "to": "+14155550123"} | who  # fmt: skip
    await gate.api("POST", "/v1/calls", switch, json=body)
    gate.clock.advance(seconds)
    await gate.api(
        "POST", f"/v1/calls/{call_id}/end", switch, json={"duration_s": seconds, **(end or {})}
    )


async def no_serious_axe_violations(p: Page, state: str) -> None:
    """axe-core (the PyPI wheel's copy) finds nothing serious or critical in this state."""
    results = await Axe().run(p)
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, (state, bad)


async def at_phone_width(p: Page, name: str | None = None, width: int = 390) -> None:
    """Task 27: nothing but the tables' own scroll areas may be wider than the screen."""
    await p.set_viewport_size({"width": width, "height": 844})
    await p.wait_for_timeout(250)  # the chart redraws at its new width
    assert await p.evaluate("document.documentElement.scrollWidth") <= width
    if name:
        await p.screenshot(path=SHOTS / name, full_page=True)


async def test_admin_wallet_cards_top_ups_and_live_calls(page: Watched, gate: LiveGate) -> None:
    p = page.page
    ws, switch = await workspace(gate, "Acme Voice")
    # Task 1: a wrong key is a clear sign-in error; the right one signs in, focus on the heading.
    await p.goto(gate.url + "/billing")
    await p.get_by_label("API key", exact=True).fill(f"gk_{ws['id']}_not-a-real-secret")
    await p.get_by_role("button", name="Sign in", exact=True).click()
    await expect(p.locator("#signin-error")).to_contain_text("not accepted")
    await expect(p.locator("#app")).to_be_hidden()
    await sign_in(p, gate.url, ws["key"])
    await expect(p.locator("#who")).to_have_text("Acme Voice · office admin")
    assert await p.evaluate("document.activeElement.id") == "wallet-title"
    # Task 2: balance and minutes left.
    await expect(p.locator("#balance")).to_have_text("$10.00")
    await expect(p.locator("#minutes-left")).to_contain_text("voice 50")  # $10 at $0.20/min
    await expect(p.locator("#live")).to_have_text("Live")
    assert await p.evaluate("sessionStorage.getItem('gate.billing.key')") == ws["key"]
    assert await p.context.cookies() == []
    assert all(ws["key"] not in u for u in page.requests)

    # Task 29: no card yet; automatic payments "Not active"; a declined card, then a Visa.
    await expect(p.locator("#cards-empty")).to_be_visible()
    await expect(p.locator("#ar-state")).to_contain_text("Not active. Connect a card first.")
    await expect(p.get_by_label("Payment method")).to_have_count(0)  # no free-text pm_ field
    await p.get_by_role("button", name="Connect a card", exact=True).click()
    await p.get_by_label("Test card (sandbox payments)").select_option("pm_card_chargeDeclined")
    await p.get_by_role("button", name="Connect this card", exact=True).click()
    await expect(p.locator("#err-cards")).to_have_text(
        "The card was declined. Nothing was charged. Use another card or ask your bank."
    )
    await p.get_by_label("Test card (sandbox payments)").select_option("pm_card_visa")
    await p.get_by_role("button", name="Connect this card", exact=True).click()
    await expect(p.locator("#card-list")).to_have_text("Visa •••• 4242 · expires 12/2034 · default")

    # Task 3: a preset, a review step naming the card, then the charge.
    await p.get_by_role("button", name="$25", exact=True).click()
    await p.get_by_role("button", name="Review top-up", exact=True).click()
    await expect(p.locator("#review-text")).to_have_text("Charge $25.00 to Visa •••• 4242?")
    assert (await gate.api("GET", "/v1/wallet", ws["key"]))["balance_micros"] == 10_000_000
    await p.get_by_role("button", name="Confirm and charge", exact=True).dblclick()  # once
    await expect(p.locator("#balance")).to_have_text("$35.00")
    first_row = p.locator("#tx-table tbody tr").first
    await expect(first_row).to_contain_text("+$25.00")
    await expect(p.locator("#events li").first).to_contain_text("$25.00 added. Balance $35.00.")
    # Task 4: a custom amount as a person types it; wrong ones get words, not JSON paths.
    amount = p.get_by_label("Amount in USD ($1 to $1,000)", exact=True)
    for typed, said in (
        ("12.345", "Amounts are in dollars and cents: 12.345 has 3 decimals. Did you mean 12.35?"),
        ("0.5", "The smallest amount is $1; enter 1 or more."),
        ("1,000.01", "The largest amount is $1,000; enter 1,000 or less."),
        ("forty", "“forty” is not an amount in dollars; write it like 25 or 37.50."),
    ):
        await amount.fill(typed)
        await p.get_by_role("button", name="Review top-up", exact=True).click()
        await expect(p.locator("#err-amount_usd")).to_have_text(said)
    await amount.fill("1,000")
    await p.get_by_role("button", name="Review top-up", exact=True).click()
    await expect(p.locator("#review-text")).to_have_text("Charge $1,000.00 to Visa •••• 4242?")
    await p.get_by_role("button", name="Change", exact=True).click()
    await amount.fill("$37.50")
    await p.get_by_role("button", name="Review top-up", exact=True).click()
    await expect(p.locator("#review-text")).to_have_text("Charge $37.50 to Visa •••• 4242?")
    await p.get_by_role("button", name="Confirm and charge", exact=True).click()
    await expect(p.locator("#balance")).to_have_text("$72.50")
    recharges = await gate.api("GET", "/v1/wallet/transactions?type=recharge", ws["key"])
    assert [r["amount_micros"] for r in recharges["data"]] == [37_500_000, 25_000_000]

    # Task 5: auto-recharge; a bad amount is said in words; then on, with its state shown.
    await p.get_by_label("Recharge automatically", exact=True).check()
    await p.get_by_label("Recharge when below (USD)", exact=True).fill("5")
    await p.get_by_label("Recharge amount (USD)", exact=True).fill("5000")
    await p.get_by_role("button", name="Save settings", exact=True).click()
    await expect(p.locator("[id='err-auto_recharge.topup_usd']")).to_have_text(
        "The largest amount is $1,000; enter 1,000 or less."
    )
    await p.get_by_label("Recharge amount (USD)", exact=True).fill("$25")
    await p.get_by_label("Most charged automatically per month (USD)").fill("500")
    # Task 6: a low-balance alert at $70.
    await p.get_by_label("Email me when the balance is low", exact=True).check()
    await p.get_by_label("Alert when below (USD)", exact=True).fill("70")
    await p.locator("#lb-email").fill("ops@acme.test")
    await p.get_by_role("button", name="Save settings", exact=True).click()
    await expect(p.locator("#settings-result")).to_have_text("Settings saved.")
    await expect(p.locator("#ar-state")).to_contain_text("Automatic payments: Active")
    await expect(p.locator("#ar-state")).to_contain_text("of a $500.00 monthly cap")
    await expect(p.locator("#low-bar")).to_be_hidden()
    await no_serious_axe_violations(p, "wallet")

    # Task 7: a live call's hold shows while it runs; task 9: crossing $70 turns the bar red.
    body = {"call_id": "c1", "direction": "outbound", "from": "+14155550100",
            "to": "+14155550123", "user": "alice", "group": "sales"}  # fmt: skip
    await gate.api("POST", "/v1/calls", switch, json=body)
    await expect(p.locator("#live-calls")).to_have_text("1")
    await expect(p.locator("#reserved")).to_have_text("$0.20")
    live_call = p.locator("#calls-table tbody tr")
    await expect(live_call).to_contain_text("To +14155550123")
    await expect(live_call.locator("td.cost")).to_have_text("$0.00")
    gate.clock.advance(300)
    await expect(live_call.locator("td.cost")).to_have_text("$1.00")  # 5 min at $0.20
    await expect(live_call).to_contain_text("5:00")
    gate.clock.advance(600)
    await expect(p.locator("#reserved")).not_to_have_text("$0.20")  # the hold grows with it
    await gate.api("POST", "/v1/calls/c1/end", switch, json={"duration_s": 900})
    await expect(first_row).to_contain_text(f"{MINUS}$3.00")
    await expect(p.locator("#balance")).to_have_text("$69.50")
    await expect(p.locator("#calls")).to_be_hidden()
    await expect(p.locator("#tx-table")).to_contain_text("Wallet top-up (Visa •••• 4242)")
    await expect(p.locator("#low-bar")).to_contain_text("below your alert threshold of $70.00")
    assert await p.locator("#low-bar").evaluate("e => getComputedStyle(e).backgroundColor") == (
        "rgb(180, 35, 24)"
    )
    charged = p.locator("#events li").filter(has_text="Call charged $3.00. Balance $69.50.")
    await expect(charged).to_have_count(1)
    assert (await charged.locator("time").get_attribute("title") or "").endswith(" UTC")
    await p.screenshot(path=SHOTS / "wallet-desktop.png", full_page=True)
    await at_phone_width(p, "wallet-phone.png")
    await no_serious_axe_violations(p, "wallet at 390 px")


async def test_cut_arrives_without_reload_and_no_plumbing_events(
    page: Watched, gate: LiveGate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    p = page.page
    ws, switch = await workspace(gate, "Thin Margins")
    adjust = {"amount_usd": "-9.70", "type": "adjustment", "description": "test: leave $0.30"}
    await gate.api("POST", f"/v1/workspaces/{ws['id']}/adjustments", json=adjust)
    await sign_in(p, gate.url, ws["key"])
    await expect(p.locator("#balance")).to_have_text("$0.30")
    await expect(p.locator("#live")).to_have_text("Live")
    body = {"call_id": "short", "direction": "outbound", "from": "+14155550100",
            "to": "+14155550123"}  # fmt: skip
    await gate.api("POST", "/v1/calls", switch, json=body)
    await expect(p.locator("#calls-table tbody tr")).to_contain_text("To +14155550123")
    # Task 8: $0.30 pays 90 s at $0.20/min: the ticker cuts the call; the page says so.
    for _ in range(10):
        gate.clock.advance(10)
        await p.wait_for_timeout(50)
    await expect(p.locator("#events")).to_contain_text(
        "Call to +14155550123 was cut: the balance ran out."
    )
    await gate.api("POST", "/v1/calls/short/end", switch, json={"duration_s": 90})
    await expect(p.locator("#tx-table tbody tr").first).to_contain_text(f"{MINUS}$0.30")
    await expect(p.locator("#balance")).to_have_text("$0.00")
    await expect(p.locator("#low-bar")).to_contain_text("No money available")
    await expect(p.locator("#status")).to_have_text("Empty: calls are refused until a top-up")
    # Holds extended every few seconds are plumbing: none of them is in the list.
    types = await p.locator("#events li").evaluate_all("ls => ls.map(l => l.dataset.type)")
    assert "call.extended" not in types and "call.limit" not in types
    assert await p.locator("#events").get_attribute("aria-live") is None
    assert '"GET /billing HTTP/1.1" 200' in caplog.text  # the access log was captured...
    assert ws["key"] not in caplog.text  # ...and the key is in no log line, not even DEBUG


async def test_usage_costs_filters_details_and_month(page: Watched, gate: LiveGate) -> None:
    """Tasks 10-20 on a workspace whose plan pays part of its usage."""
    p = page.page
    ws, switch = await workspace(gate, "Plan Co")
    await gate.api("PUT", f"/v1/workspaces/{ws['id']}/plan", json={"plan": "small",
                   "cycle_anchor": 1})  # fmt: skip
    # A 5-minute call: $1 from the calling commitment; a second one from credits.
    await call(gate, switch, "c1", 300, user="alice", group="sales")
    await call(gate, switch, "c2", 120, {"quality_mos": 4.3}, user="Bob", group="support",
               to="+442071234567")  # fmt: skip
    sms = {
        "charge_id": "s1",
        "service": "sms",
        "segments": 12,
        "from": "+14155550100",
        "to": "+14155550123",
        "user": "alice",
        "message_id": "SM1",
        "status": "delivered",
    }
    await gate.api("POST", "/v1/charges", switch, json=sms)
    fax = {"charge_id": "f1", "service": "fax", "pages": 3, "from": "+14155550100",
           "to": "+33142685300", "status": "failed", "user": "Bob"}  # fmt: skip
    await gate.api("POST", "/v1/charges", switch, json=fax)
    gate.clock.advance(86400)
    agent = {"ai_mode": "voice", "skills": ["book_meeting"], "actions": 2, "sessions": 1}
    await call(gate, switch, "a1", 300, agent, user="alice", group="sales", service="ai_agent")
    await sign_in(p, gate.url, ws["key"])
    await p.get_by_role("button", name="Usage history", exact=True).click()
    rows = p.locator("#usage-table tbody tr")
    await expect(rows).to_have_count(7)  # plan cycle, signup, 2 calls, sms, fax, AI agent
    # Commitment-paid usage is not free: its cost and what paid it are on the row.
    c1 = rows.filter(has_text="→ +14155550123").filter(has_text="Call")
    await expect(c1.locator("td.cost")).to_have_text("$1.00")
    await expect(c1.locator("td.paid")).to_have_text("Commitment (calling) $1.00")
    await expect(c1.locator("td.amount")).to_have_text("$0.00")  # nothing left the wallet
    ai = rows.filter(has_text="AI agent")
    await expect(ai.locator("td.paid")).to_have_text("Plan allowance 2:00 min + Credits $2.67")
    sms_row = rows.filter(has_text="SMS")
    await expect(sms_row.locator("td.paid")).to_have_text(
        "Plan allowance 10 segments + Credits $0.02"
    )
    # Task 18: the chart counts the commitment's $1 (was "No spend in this range").
    legend = p.locator("#chart-legend")
    await expect(legend).to_contain_text("Calling: $1.40 (commitment $1.00, credits $0.40)")
    await expect(legend).to_contain_text("AI agent: $2.67")
    sources = await p.locator("#chart svg rect.bar").evaluate_all(
        "bs => bs.map(b => b.dataset.service + ':' + b.dataset.source)"
    )
    assert "call:commitment" in sources and "call:credits" in sources
    # Task 19: plan usage with what is committed, spent and left.
    plan = p.locator("#plan-table tbody")
    await expect(plan).to_contain_text("calling commitment")
    await expect(plan.locator("tr").filter(has_text="calling commitment")).to_contain_text("100%")
    await no_serious_axe_violations(p, "usage")
    await p.screenshot(path=SHOTS / "usage-desktop.png", full_page=True)

    # Task 17: the details panel for a call, an SMS, a fax and an AI agent row.
    async def details(row: Any, *facts: str) -> None:
        await row.get_by_role("button").click()
        panel = p.get_by_role("dialog")
        await expect(panel).to_be_visible()
        for fact in facts:
            await expect(panel.locator("#details-list")).to_contain_text(fact)
        await p.keyboard.press("Escape")
        await expect(panel).to_be_hidden()

    c2 = rows.filter(has_text="+442071234567")
    await details(c2, "Call IDc2", "LocationLondon, GB", "Rate per minute$0.20",
                  "Billing increment60 s, then 6 s", "Duration2:00 (120 s)",
                  "Call quality4.3 MOS")  # fmt: skip
    await details(sms_row, "Message IDSM1", "Message segments12", "Delivery statusDelivered",
                  "Rate per segment$0.0079", "Cost$0.0158")  # fmt: skip
    await details(rows.filter(has_text="Fax"), "Fax IDf1", "Pages3", "StatusFailed",
                  "Fax line+14155550100", "LocationParis, FR")  # fmt: skip
    await details(ai, "Conversation IDa1", "ModeVoice AI", "Duration5:00 (300 s)",
                  "Skills triggeredbook_meeting", "Actions executed2", "Sessions consumed1",
                  "Paid fromPlan allowance 2:00 min + Credits $2.67")  # fmt: skip
    assert await p.evaluate("document.activeElement.textContent") == "AI agent"  # focus back

    async def filtered(label: str, value: str, count: int) -> None:
        """Set one filter, apply, see `count` rows; then clear the filter again."""
        field = p.get_by_label(label, exact=True)
        setter = field.select_option if label in ("Service", "Paid from") else field.fill
        await setter(value)
        await p.get_by_role("button", name="Apply filters", exact=True).click()
        await expect(rows).to_have_count(count)
        await setter("")

    await filtered("Service", "calling", 2)  # task 10
    await filtered("User, group or contact", "Bob", 2)  # task 12: the call and the fax of Bob
    assert "Bob" in await p.locator("#people option").evaluate_all("os => os.map(o => o.value)")
    await filtered("Paid from", "commitment", 1)  # task 14: by the credits that paid it
    # Task 13: by amount, typed as a person types it; a wrong one said in words.
    await filtered("Amount from (USD)", "$2", 2)  # the signup credit and the AI agent
    await p.get_by_label("Amount from (USD)", exact=True).fill("2.3456")
    await p.get_by_role("button", name="Apply filters", exact=True).click()
    await expect(p.locator("#err-min_amount_usd")).to_contain_text("dollars and cents")
    await p.get_by_label("Amount from (USD)", exact=True).fill("")
    # Task 11: by month: this month has them all, an old month none.
    month = time.strftime("%Y-%m", time.gmtime(gate.clock.now_ms() / 1000))
    await p.get_by_label("Month", exact=True).fill("2020-01")
    await p.get_by_role("button", name="Apply filters", exact=True).click()
    await expect(p.locator("#usage-empty")).to_be_visible()
    await p.get_by_label("Month", exact=True).fill(month)
    await p.get_by_role("button", name="Apply filters", exact=True).click()
    await expect(rows).to_have_count(7)

    # Task 15: the CSV has every filtered row with its cost and source split.
    async with p.expect_download() as info:
        await p.get_by_role("button", name="Export CSV", exact=True).click()
    download = await info.value
    today = time.strftime("%Y-%m-%d", time.gmtime(gate.clock.now_ms() / 1000))
    assert download.suggested_filename == f"usage-history-{today}.csv"
    text = await asyncio.to_thread(Path(await download.path()).read_text)
    exported = {r["reference"]: r for r in csv.DictReader(io.StringIO(text))}
    shown = await rows.evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert sorted(r["id"] for r in exported.values()) == sorted(shown)
    assert (exported["c1"]["cost_usd"], exported["c1"]["commitment_usd"]) == (
        "1.000000", "1.000000")  # fmt: skip
    assert exported["a1"]["allowance_units"] == "120"

    # Task 20: the month summary: per service, user, group, credits used; its export.
    await p.get_by_role("button", name="Month summary", exact=True).click()
    await expect(p.locator("#m-total")).to_have_text("$4.30")  # 1.40 + 0.0158 + 0.21 + 2.67
    await expect(p.locator("#m-services")).to_contain_text("AI agent")
    await expect(p.locator("#m-users")).to_contain_text("alice")
    await expect(p.locator("#m-groups")).to_contain_text("sales")
    await expect(p.locator("#m-plan")).to_contain_text("calling")
    async with p.expect_download() as info:
        await p.get_by_role("button", name="Export summary CSV", exact=True).click()
    assert (await info.value).suggested_filename == f"usage-summary-{month}.csv"
    await no_serious_axe_violations(p, "month")

    # Task 27: the details panel is a full-screen sheet on a phone.
    await p.get_by_role("button", name="Usage history", exact=True).click()
    await at_phone_width(p, "usage-phone.png")
    await expect(rows.first.locator("td.office-col")).to_be_hidden()  # one office: no column
    await rows.filter(has_text="Fax").get_by_role("button").click()
    box = await p.get_by_role("dialog").bounding_box()
    assert box is not None and box["width"] >= 389 and box["x"] <= 1
    await expect(p.get_by_role("dialog")).to_contain_text("Pages")
    await p.screenshot(path=SHOTS / "details-phone.png")
    await no_serious_axe_violations(p, "details at 390 px")
    await at_phone_width(p, None, width=360)


async def test_load_more_follows_the_cursor_without_gaps(page: Watched, gate: LiveGate) -> None:
    """Task 16."""
    p = page.page
    ws, _ = await workspace(gate, "Busy Desk")

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
    await p.locator("#tx-more").click()
    await expect(p.locator("#tx-table tbody tr")).to_have_count(25)
    await expect(p.locator("#tx-more")).to_be_hidden()
    assert await ids_shown() == await ids_in_ledger()
    # More new rows than a page arrive at once: the list starts over instead of leaving a gap.
    await adjustments(25, 22)
    await expect(p.locator("#tx-table tbody tr").first).to_contain_text("credit 46")
    await expect(p.locator("#balance")).to_have_text("$10.46")
    shown = await ids_shown()
    assert shown == (await ids_in_ledger())[: len(shown)]
    assert len(set(shown)) == len(shown)
    # Times in the browser's zone, UTC on hover; money in cents in lists.
    date = p.locator("#tx-table tbody tr td.date").first
    assert (await date.get_attribute("title") or "").endswith(" UTC")
    assert "UTC" not in (await date.text_content() or "")


async def test_company_admin_and_office_admin(page: Watched, gate: LiveGate) -> None:
    """Task 21: an org_admin key over 50 offices; an office admin sees its own office."""
    p = page.page
    org = await gate.api("POST", "/v1/organizations", json={"name": "Northwind"})
    offices = [
        await gate.api(
            "POST",
            "/v1/workspaces",
            json={"name": f"Northwind {city}", "organization_id": org["id"]},
        )
        for city in ["Boston", "Chicago", *(f"Branch {n:02}" for n in range(48))]
    ]
    boston, chicago = offices[0], offices[1]
    boss = await gate.api("POST", f"/v1/workspaces/{boston['id']}/keys", json={"role": "org_admin"})
    sw = await gate.api("POST", f"/v1/workspaces/{chicago['id']}/keys", json={"role": "switch"})
    await call(gate, sw["key"], "chi1", 60, user="carol")
    await sign_in(p, gate.url, boss["key"])
    await expect(p.locator("#who")).to_have_text("Northwind Boston · company admin")
    await expect(p.locator("#office-hint")).to_have_text("50 offices · together $499.80")
    await p.get_by_text("Every office's balance").click()
    await expect(p.locator("#org-table tbody tr")).to_have_count(50)
    # The switcher searches: a few letters pick Chicago, and the wallet follows.
    await p.get_by_label("Office", exact=True).first.fill("chic")
    await p.get_by_label("Office", exact=True).first.press("Enter")
    await expect(p.locator("#office-hint")).to_have_text("Showing Northwind Chicago.")
    await expect(p.locator("#balance")).to_have_text("$9.80")
    await expect(p.locator("#cards-other")).to_be_visible()  # not added to Boston by mistake
    await call(gate, sw["key"], "chi2", 60, user="carol")  # Chicago's, not the key's own office
    await expect(p.locator("#balance")).to_have_text("$9.60")
    await expect(p.locator("#tx-table tbody tr").first).to_contain_text(f"{MINUS}$0.20")
    await expect(p.get_by_role("button", name="Connect a card")).to_be_hidden()
    await p.get_by_label("Office", exact=True).first.fill("nowhere")
    await p.get_by_label("Office", exact=True).first.press("Enter")
    await expect(p.locator("#office-hint")).to_contain_text("No office is called “nowhere”")
    # Usage across every office: an Office column and filter.
    await p.get_by_role("button", name="Usage history", exact=True).click()
    await p.locator("#f-office").select_option("*")
    await p.get_by_role("button", name="Apply filters", exact=True).click()
    rows = p.locator("#usage-table tbody tr")
    await expect(rows).to_have_count(50)  # a page: 52 rows (50 signup credits and two calls)
    await expect(p.locator("#usage-more")).to_be_visible()
    await expect(rows.first).to_contain_text("Northwind Chicago")  # the newest: the call
    await expect(p.locator("#usage-table th.office-col")).to_be_visible()
    # Every column fits at 1280 px: nothing hides behind a sideways scroll (Wallet was clipped).
    assert await p.locator("#usage-table").evaluate(
        "t => t.scrollWidth <= t.parentElement.clientWidth"
    )
    await p.locator("#usage-more").click()
    await expect(rows).to_have_count(52)
    async with p.expect_download() as info:
        await p.get_by_role("button", name="Export CSV", exact=True).click()
    text = await asyncio.to_thread(Path(await (await info.value).path()).read_text)
    exported = list(csv.DictReader(io.StringIO(text)))
    assert len(exported) == 52
    assert {r["office"] for r in exported} >= {"Northwind Boston", "Northwind Chicago"}
    await no_serious_axe_violations(p, "company admin usage")
    await p.get_by_text("Every office's balance").click()  # folded again
    await p.evaluate("document.getElementById('usage-table-title').scrollIntoView()")
    await p.screenshot(path=SHOTS / "company-admin.png")
    await p.get_by_role("button", name="Sign out", exact=True).click()

    # An office admin of Chicago: its own office, no switcher, no Office column.
    admin = await gate.api("POST", f"/v1/workspaces/{chicago['id']}/keys", json={"role": "admin"})
    await sign_in(p, gate.url, admin["key"])
    await expect(p.locator("#who")).to_have_text("Northwind Chicago · office admin")
    await expect(p.locator("#offices")).to_be_hidden()
    await p.get_by_role("button", name="Usage history", exact=True).click()
    await expect(rows).to_have_count(3)
    await expect(p.locator("#usage-table th.office-col")).to_be_hidden()


async def test_agent_key_is_read_only(page: Watched, gate: LiveGate) -> None:
    """Task 22, by keyboard only."""
    p = page.page
    ws, _ = await workspace(gate, "Agents Inc")
    agent = await gate.api("POST", f"/v1/workspaces/{ws['id']}/keys", ws["key"],
                           json={"role": "agent"})  # fmt: skip
    await p.goto(gate.url + "/billing")
    await no_serious_axe_violations(p, "sign-in")
    await p.keyboard.press("Tab")
    await p.keyboard.press("Tab")
    assert await p.evaluate("document.activeElement.id") == "key"
    await p.keyboard.type(agent["key"])
    await p.keyboard.press("Enter")
    await expect(p.locator("#balance")).to_have_text("$10.00")
    await expect(p.locator("#who")).to_contain_text("read-only (agent key)")
    for hidden in ("#topup-form", "#settings-form", "#export", "#add-card"):
        await expect(p.locator(hidden)).to_be_hidden()
    await expect(p.locator("#role-note")).to_contain_text("need an admin key")
    for _ in range(12):  # Tab on to the view tabs
        await p.keyboard.press("Tab")
        if await p.evaluate("document.activeElement.id") == "tab-usage":
            break
    # The focus ring: 3 px of the page's blue (6.3:1 on the grey page, well over 3:1).
    ring = await p.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, s.outlineWidth, s.outlineColor]; })()"
    )
    assert ring == ["solid", "3px", "rgb(11, 92, 173)"]
    await p.keyboard.press("Enter")
    await expect(p.locator("#usage-table tbody tr")).to_have_count(1)
    await expect(p.get_by_role("button", name="Export CSV", exact=True)).to_have_count(0)


async def test_gate_down_and_key_revoked(page: Watched, gate: LiveGate) -> None:
    """Task 23: Gate down gives "Reconnecting…", back gives "Live"; task 26: a revoked key."""
    p = page.page
    ws, _ = await workspace(gate, "Restart Ltd")
    await sign_in(p, gate.url, ws["key"])
    await expect(p.locator("#live")).to_have_text("Live")
    await gate.stop()
    await expect(p.locator("#live")).to_have_text("Reconnecting…")
    await gate.start()
    await expect(p.locator("#live")).to_have_text("Live", timeout=20_000)
    await gate.api("POST", "/v1/wallet/topup", ws["key"],
                   json={"amount_usd": 50, "payment_method_id": "pm_card_visa"})  # fmt: skip
    await expect(p.locator("#balance")).to_have_text("$60.00")
    await p.reload()  # the session survives a reload (sessionStorage)
    await expect(p.locator("#balance")).to_have_text("$60.00")
    keys_listed = await gate.api("GET", f"/v1/workspaces/{ws['id']}/keys", ws["key"])
    own = next(k for k in keys_listed["data"] if k["role"] == "admin")
    await gate.api("DELETE", f"/v1/workspaces/{ws['id']}/keys/{own['id']}")
    await expect(p.locator("#signin")).to_be_visible()
    await expect(p.locator("#signin-error")).to_contain_text("revoked or expired")
    assert await p.evaluate("sessionStorage.length") == 0


async def test_ten_tabs_share_one_stream(browser: Browser, gate: LiveGate) -> None:
    """Task 25: ten tabs in one browser, all live on one connection; a top-up in one shows
    in all (each tab's own stream used to take one of six connections and froze them)."""
    ws, _ = await workspace(gate, "Many Tabs")
    await gate.api("POST", "/v1/wallet/payment_methods", ws["key"],
                   json={"payment_method_id": "pm_card_visa"})  # fmt: skip
    context = await browser.new_context(viewport={"width": 1000, "height": 700})
    try:
        tabs = [await context.new_page() for _ in range(10)]
        for tab in tabs:
            tab.set_default_timeout(WAIT_MS * 2)
        # sessionStorage is per tab: each tab signs in (as a person pasting the key).
        await asyncio.gather(*(sign_in(tab, gate.url, ws["key"]) for tab in tabs))
        for tab in tabs:
            await expect(tab.locator("#live")).to_have_text("Live")
            assert await tab.evaluate("document.body.dataset.connection") == "shared-worker"
        assert gate.streams_opened == 1
        last = tabs[-1]
        await last.get_by_role("button", name="$25", exact=True).click()
        await last.get_by_role("button", name="Review top-up", exact=True).click()
        await last.get_by_role("button", name="Confirm and charge", exact=True).click()
        for tab in tabs:
            await expect(tab.locator("#balance")).to_have_text("$35.00")
            await expect(tab.locator("#events li").first).to_contain_text("$25.00 added.")
        # Closing tabs keeps the others live; the stream is still the one.
        for tab in tabs[:5]:
            await tab.close()
        await gate.api("POST", "/v1/wallet/topup", ws["key"], json={"amount_usd": 5})
        for tab in tabs[5:]:
            await expect(tab.locator("#balance")).to_have_text("$40.00")
        assert gate.streams_opened == 1
    finally:
        await context.close()


async def test_without_shared_worker_one_tab_leads(browser: Browser, gate: LiveGate) -> None:
    """Task 25 where SharedWorker is missing (Chrome on Android): one tab, elected with a
    Web Lock, holds the stream and passes events on; when it closes another tab takes over."""
    ws, _ = await workspace(gate, "Phones Only")
    context = await browser.new_context(viewport=PHONE)
    await context.add_init_script("delete window.SharedWorker")
    try:
        tabs = [await context.new_page() for _ in range(3)]
        for tab in tabs:
            await sign_in(tab, gate.url, ws["key"])
            assert await tab.evaluate("document.body.dataset.connection") == "leader"
        for tab in tabs:
            await expect(tab.locator("#live")).to_have_text("Live")
        assert gate.streams_opened == 1
        await tabs[0].close()  # the leader goes; the lock passes on
        await gate.api("POST", "/v1/wallet/topup", ws["key"],
                       json={"amount_usd": 5, "payment_method_id": "pm_card_visa"})  # fmt: skip
        for tab in tabs[1:]:
            await expect(tab.locator("#balance")).to_have_text("$15.00")
            await expect(tab.locator("#live")).to_have_text("Live")
        assert gate.streams_opened == 2
        await gate.api("POST", "/v1/wallet/topup", ws["key"],
                       json={"amount_usd": 5, "payment_method_id": "pm_card_visa"})  # fmt: skip
        for tab in tabs[1:]:  # the new leader's stream reaches every tab
            await expect(tab.locator("#events li").first).to_contain_text("$5.00 added.")
    finally:
        await context.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer.start(tmp_path / "redis") as server:
        yield server


async def test_redis_away_says_gate_unavailable(
    browser: Browser, rated: Settings, own_redis: RedisServer
) -> None:
    """Task 24: Redis paused while Gate is up: the badge stops saying "Live"."""
    live = LiveGate(replace(rated, redis_url=own_redis.url, redis_timeout_ms=250), ManualClock())
    await live.start()
    context = await browser.new_context(viewport=DESKTOP)
    try:
        p = await context.new_page()
        ws, _ = await workspace(live, "Outage Inc")
        await sign_in(p, live.url, ws["key"])
        await expect(p.locator("#live")).to_have_text("Live")
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            await expect(p.locator("#live")).to_have_text(
                "Gate unavailable: figures may be out of date"
            )
            await no_serious_axe_violations(p, "gate unavailable")
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        await expect(p.locator("#live")).to_have_text("Live", timeout=20_000)
    finally:
        await context.close()
        await live.stop()


async def test_spending_alert_can_be_dismissed_per_workspace(page: Watched, gate: LiveGate) -> None:
    """Task 28: the alert banner of seed 001, dismissed for this workspace and month."""
    p = page.page
    ws, switch = await workspace(gate, "Spendy")
    await gate.api("PUT", "/v1/wallet/spending-alerts", ws["key"],
                   json={"monthly_budget_usd": "4", "thresholds_pct": [50, 100]})  # fmt: skip
    await call(gate, switch, "big", 900, user="dana")  # $3.00: 75% of the budget
    await sign_in(p, gate.url, ws["key"])
    banner = p.locator("#spend-alert")
    await expect(banner).to_contain_text(
        "You have spent $3.00 this month, 50% of your $4.00 budget. Most of it: calling."
    )
    await p.get_by_role("button", name="Dismiss", exact=True).click()
    await expect(banner).to_be_hidden()
    await p.reload()
    await expect(p.locator("#balance")).to_have_text("$7.00")
    await expect(banner).to_be_hidden()  # stays dismissed
    await call(gate, switch, "bigger", 300, user="dana")  # $4.00: the 100% mark, a new alert
    await p.reload()
    await expect(banner).to_contain_text("100% of your $4.00 budget")


async def test_a_sign_in_link_signs_a_person_in_and_shows_the_activity(
    page: Watched, gate: LiveGate
) -> None:
    p = page.page
    ws = await gate.api("POST", "/v1/workspaces", json={"name": "People Inc"})
    link = await gate.api("POST", f"/v1/workspaces/{ws['id']}/signin-links",
                          json={"person": "alice@example.com", "base_url": gate.url})  # fmt: skip
    await gate.api("PATCH", "/v1/workspace", ws["key"], json={"inbound_grace_s": 9})
    await p.goto(link["url"])
    await expect(p.locator("#who")).to_contain_text("alice@example.com, office admin")
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

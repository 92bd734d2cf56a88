"""The Stripe provider against localstripe (a stateful fake Stripe server started here).

localstripe's gaps (PyPI 1.15): it ignores `idempotency_key` and drops PaymentIntent
metadata, so these tests check Gate's own dedupe (its key -> PaymentIntent record) and its
own PaymentIntent -> workspace record for the webhook, which a real Stripe backs up with
both.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import stripe
from redis.asyncio import Redis

from gate.api.http import AUTOMATION, METHODS
from gate.clock import ManualClock
from gate.store import keys
from gate.store.redis_proc import RedisServer
from gate.wallet.stripe_provider import StripeProvider
from tests.conftest import PLATFORM, PLATFORM_KEY, Client, MakeClient, auth, new_workspace
from tests.helpers import all_rows, wallet_json

SECRET = "whsec_gate_test_secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """localstripe on 127.0.0.1 only (its own `start()` binds every interface)."""
    port = free_port()
    code = (
        "from aiohttp import web; import localstripe.server as s; "
        f"web.run_app(s.app, host='127.0.0.1', port={port}, print=None)"
    )
    log = (tmp_path_factory.mktemp("localstripe") / "log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("localstripe did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
async def client(make_client: MakeClient, localstripe: str) -> Client:
    return await make_client(
        payments="stripe",
        stripe_api_key="sk_test_gate",
        stripe_webhook_secret=SECRET,
        stripe_api_base=localstripe,
    )


@pytest.fixture
async def cards(localstripe: str) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """Make a PaymentMethod for a test card number (what Stripe.js does in a browser)."""
    http = stripe.AIOHTTPClient()
    api = stripe.StripeClient("sk_test_gate", base_addresses={"api": localstripe}, http_client=http)

    async def make(number: str) -> str:
        pm = await api.v1.payment_methods.create_async(
            {
                "type": "card",
                "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
            }
        )
        return str(pm.id)

    yield make
    await http.close_async()  # type: ignore[no-untyped-call]


def provider_of(client: Client) -> StripeProvider:
    provider = client.server.app[METHODS].payments
    assert isinstance(provider, StripeProvider)
    return provider


async def workspace_with_card(
    client: Client, cards: Callable[[str], Awaitable[str]]
) -> tuple[dict[str, Any], dict[str, str], str]:
    """A new workspace, its admin headers, and a Visa card on file (the default)."""
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    pm = await cards("4242424242424242")
    resp = await client.post(
        "/v1/wallet/payment_methods", json={"payment_method_id": pm}, headers=admin
    )
    assert resp.status == 201, await resp.text()
    return ws, admin, pm


async def auto_recharge_on(client: Client, admin: dict[str, str]) -> None:
    """Auto-recharge $20 below $5, on the default card."""
    on = {"auto_recharge": {"enabled": True, "threshold_usd": 5, "topup_usd": 20}}
    resp = await client.patch("/v1/wallet/settings", json=on, headers=admin)
    assert resp.status == 200, await resp.text()


async def test_add_a_card_and_top_up_with_the_default(
    client: Client, cards: Callable[[str], Awaitable[str]]
) -> None:
    ws, admin, _ = await workspace_with_card(client, cards)
    resp = await client.get("/v1/wallet/payment_methods", headers=admin)
    [added] = (await resp.json())["data"]
    assert (added["brand"], added["last4"], added["exp_month"], added["exp_year"]) == (
        "visa", "4242", 12, 2034,
    )  # fmt: skip
    resp = await client.post("/v1/wallet/topup", json={"amount_usd": "25.50"}, headers=admin)
    assert resp.status == 201, await resp.text()
    row = await resp.json()
    assert row["reference"].startswith("pi_")
    assert row["amount_micros"] == 25_500_000
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 35_500_000


async def test_declines_store_nothing_and_credit_nothing(
    client: Client, cards: Callable[[str], Awaitable[str]], redis: Redis
) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    refused = await cards("4000000000000002")  # declined when attached
    resp = await client.post(
        "/v1/wallet/payment_methods", json={"payment_method_id": refused}, headers=admin
    )
    assert resp.status == 402, await resp.text()
    assert (await resp.json())["error"]["code"] == "payment_declined"
    assert await redis.hlen(f"{keys.for_workspace(ws['id']).ws}:methods") == 0
    declines = await cards("4000000000000341")  # attaches, declines every charge
    resp = await client.post(
        "/v1/wallet/topup", json={"amount_usd": 10, "payment_method_id": declines}, headers=admin
    )
    assert resp.status == 402, await resp.text()
    assert (await resp.json())["error"]["code"] == "payment_declined"
    resp = await client.post(
        "/v1/wallet/topup", json={"amount_usd": 10, "payment_method_id": "pm_nope"}, headers=admin
    )
    assert resp.status == 400
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 10_000_000


async def test_one_gate_key_makes_one_payment_intent(
    client: Client, cards: Callable[[str], Awaitable[str]]
) -> None:
    """localstripe ignores idempotency_key: Gate's own record of the key must dedupe."""
    ws = await new_workspace(client)
    pm = await cards("4242424242424242")
    provider = provider_of(client)
    first = await provider.charge(ws["id"], pm, 10_000_000, "k-1")
    again = await provider.charge(ws["id"], pm, 10_000_000, "k-1")
    other = await provider.charge(ws["id"], pm, 10_000_000, "k-2")
    assert again.id == first.id
    assert other.id != first.id


def signed(payload: bytes, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), b"%d.%s" % (stamp, payload), hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={stamp},v1={mac}", "Content-Type": "application/json"}


def succeeded_event(
    event_id: str,
    intent_id: str,
    cents: int,
    metadata: dict[str, str] | None = None,
    currency: str = "usd",
) -> bytes:
    """A payment_intent.succeeded event in Stripe's documented shape (the fields Gate reads)."""
    return orjson.dumps(
        {
            "id": event_id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "type": "payment_intent.succeeded",
            "data": {
                "object": {
                    "id": intent_id,
                    "object": "payment_intent",
                    "amount": cents,
                    "amount_received": cents,
                    "currency": currency,
                    "status": "succeeded",
                    "metadata": metadata or {},
                }
            },
        }
    )


async def test_webhook_credits_a_charge_gate_did_not_credit_once(
    client: Client, cards: Callable[[str], Awaitable[str]], localstripe: str
) -> None:
    ws = await new_workspace(client)
    pm = await cards("4242424242424242")
    # Gate charged the card and died before the credit:
    payment = await provider_of(client).charge(ws["id"], pm, 20_000_000, "topup:crash-1")
    body = succeeded_event("evt_gate_1", payment.id, 2000)
    path = "/v1/providers/stripe/webhook"
    bad = await client.post(path, data=body, headers=signed(body, "whsec_wrong"))
    assert bad.status == 400
    assert (await bad.json())["error"]["code"] == "validation_error"
    stale = await client.post(path, data=body, headers=signed(body, at=int(time.time()) - 3600))
    assert stale.status == 400
    future = await client.post(path, data=body, headers=signed(body, at=int(time.time()) + 600))
    assert future.status == 400, "a signature dated 10 minutes ahead is outside the window"
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 10_000_000
    resp = await client.post(path, data=body, headers=signed(body))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["credited"] is True
    replay = await client.post(path, data=body, headers=signed(body))
    assert (await replay.json()).get("duplicate") is True
    other_event = succeeded_event("evt_gate_2", payment.id, 2000)  # same payment, new event
    again = await client.post(path, data=other_event, headers=signed(other_event))
    assert (await again.json())["credited"] is False
    rows = [r for r in await all_rows(client, ws["key"]) if r["type"] == "recharge"]
    assert [r["reference"] for r in rows] == [payment.id]
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 30_000_000


async def test_localstripe_signed_webhook_reaches_gate(
    client: Client, cards: Callable[[str], Awaitable[str]], localstripe: str
) -> None:
    """localstripe itself signs and sends payment_intent.succeeded to the route."""
    url = str(client.make_url("/v1/providers/stripe/webhook"))
    async with client.session.post(
        f"{localstripe}/_config/webhooks/gate-{time.monotonic_ns()}",
        data={"url": url, "secret": SECRET, "events[]": "payment_intent.succeeded"},
    ) as resp:
        assert resp.status == 200, await resp.text()
    ws = await new_workspace(client)
    pm = await cards("4242424242424242")
    payment = await provider_of(client).charge(ws["id"], pm, 15_000_000, "topup:crash-2")
    for _ in range(100):  # localstripe waits a second before it sends
        rows = [r for r in await all_rows(client, ws["key"]) if r["type"] == "recharge"]
        if rows:
            break
        await asyncio.sleep(0.05)
    assert [r["reference"] for r in rows] == [payment.id]


async def test_auto_recharge_charges_the_default_card_at_stripe(
    client: Client, cards: Callable[[str], Awaitable[str]]
) -> None:
    from tests.test_auto_recharge import adjust, recharges, work

    ws, admin, _ = await workspace_with_card(client, cards)
    await auto_recharge_on(client, admin)
    await adjust(client, ws, "-6")

    async def credited() -> bool:
        return bool(await recharges(client, ws))

    await work(client, credited)
    rows = await recharges(client, ws)
    assert len(rows) == 1
    assert rows[0]["reference"].startswith("pi_")
    assert rows[0]["amount_micros"] == 20_000_000


WEBHOOK = "/v1/providers/stripe/webhook"


def ignored_count(metrics: str, reason: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'gate_provider_events_ignored_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_hundred_forged_events_move_no_money(
    client: Client, cards: Callable[[str], Awaitable[str]], localstripe: str
) -> None:
    """Issue 20: a signed payment_intent.succeeded for a payment Gate never made credited the
    workspace named in its metadata, at the event's amount."""
    ws = await new_workspace(client)
    before = ignored_count(await (await client.get("/metrics")).text(), "unknown_payment")
    # A real succeeded PaymentIntent in the same Stripe account, made outside Gate:
    http = stripe.AIOHTTPClient()
    api = stripe.StripeClient("sk_test_gate", base_addresses={"api": localstripe}, http_client=http)
    try:
        pm = await cards("4242424242424242")
        outside = await api.v1.payment_intents.create_async(
            {"amount": 100_000, "currency": "usd", "payment_method": pm, "confirm": True,
             "metadata": {"workspace_id": ws["id"], "gate_key": "topup:x"}}
        )  # fmt: skip
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    assert outside.status == "succeeded"
    forged = [outside.id] + [f"pi_forged{i:03d}" for i in range(99)]
    for i, intent_id in enumerate(forged):
        meta = {"workspace_id": ws["id"], "gate_key": f"topup:forged-{i}"}
        body = succeeded_event(f"evt_forged_{i}_{time.monotonic_ns()}", intent_id, 100_000, meta)
        resp = await client.post(WEBHOOK, data=body, headers=signed(body))
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
        assert answer["credited"] is False and answer["ignored"] == "unknown_payment", answer
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 10_000_000
    assert [r["type"] for r in await all_rows(client, ws["key"])] == ["adjustment"]
    after = ignored_count(await (await client.get("/metrics")).text(), "unknown_payment")
    assert after - before == 100


async def test_an_event_that_differs_from_gates_record_is_refused(
    client: Client, cards: Callable[[str], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    ws, other = await new_workspace(client), await new_workspace(client, "Other")
    pm = await cards("4242424242424242")
    payment = await provider_of(client).charge(ws["id"], pm, 20_000_000, "topup:mismatch")
    wrong = [
        succeeded_event("evt_mm_amount", payment.id, 200_000),  # amount
        succeeded_event("evt_mm_currency", payment.id, 2000, currency="eur"),  # currency
        succeeded_event("evt_mm_ws", payment.id, 2000, {"workspace_id": other["id"]}),
    ]
    for body in wrong:
        resp = await client.post(WEBHOOK, data=body, headers=signed(body))
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["ignored"] == "mismatch"
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "differs" in r.message]
    assert len(errors) == 3
    for key in (ws["key"], other["key"]):
        assert (await wallet_json(client, key))["balance_micros"] == 10_000_000
    # The right event credits Gate's recorded amount once.
    body = succeeded_event("evt_mm_right", payment.id, 2000, {"workspace_id": ws["id"]})
    resp = await client.post(WEBHOOK, data=body, headers=signed(body))
    assert (await resp.json())["credited"] is True
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 30_000_000


@pytest.fixture
def crashing_gate(
    redis_server: RedisServer, localstripe: str, tmp_path: Path
) -> Iterator[Callable[[], str]]:
    """`gate serve` on the tests' Redis and localstripe that kills itself (-9) right after
    Stripe created a PaymentIntent and before Gate recorded its id: the worst moment."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        port = free_port()
        env = os.environ | {
            "GATE_REDIS_URL": redis_server.url,
            "GATE_HOST": "127.0.0.1",
            "GATE_PORT": str(port),
            "GATE_PLATFORM_KEY": PLATFORM_KEY,
            "GATE_PAYMENTS": "stripe",
            "GATE_STRIPE_API_KEY": "sk_test_gate",
            "GATE_STRIPE_WEBHOOK_SECRET": SECRET,
            "GATE_STRIPE_API_BASE": localstripe,
            "GATE_CRASH_AT": "payment_created",
            "GATE_DATA_DIR": str(tmp_path / "var"),
            "GATE_LOG_LEVEL": "WARNING",
        }
        with (tmp_path / "gate.log").open("ab") as log:  # the child keeps its own copy
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gate", "serve"], env=env, stdout=log, stderr=log
                )
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert procs[-1].poll() is None, (tmp_path / "gate.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.1)
        raise AssertionError("gate serve did not start")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def intents_of(localstripe: str, workspace_id: str) -> list[stripe.PaymentIntent]:
    """Every PaymentIntent Gate made for the workspace, as Stripe holds them."""
    http = stripe.AIOHTTPClient()
    api = stripe.StripeClient("sk_test_gate", base_addresses={"api": localstripe}, http_client=http)
    try:
        page = await api.v1.payment_intents.list_async({"limit": 100})
        found = []
        async for pi in page.auto_paging_iter():
            meta = pi.metadata.to_dict() if pi.metadata else {}
            if meta.get("workspace_id") == workspace_id and meta.get("gate_key"):
                found.append(pi)
        return found
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


async def test_kill_9_between_create_and_record_charges_once_and_credits_once(
    client: Client,
    cards: Callable[[str], Awaitable[str]],
    crashing_gate: Callable[[], str],
    localstripe: str,
    clock: ManualClock,
) -> None:
    """Issue 20: localstripe ignores idempotency_key, and Gate recorded the PaymentIntent only
    after Stripe answered: a kill -9 in between charged the card twice on recovery."""
    ws, admin, pm = await workspace_with_card(client, cards)
    base = crashing_gate()
    topup = {"amount_usd": 25, "payment_method_id": pm}
    crash_headers = admin | {"Idempotency-Key": "crash-topup-1"}
    url = f"{base}/v1/wallet/topup"
    with pytest.raises(aiohttp.ClientError):
        async with client.session.post(url, json=topup, headers=crash_headers):
            pass
    made = await intents_of(localstripe, ws["id"])
    assert [pi.status for pi in made] == ["succeeded"], "the card was charged, Gate died"
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 10_000_000
    # Recovery in a live Gate, once the dead request's Idempotency-Key lease has lapsed:
    from tests.test_auto_recharge import recharges, work

    clock.advance(60)
    await client.server.app[AUTOMATION].rescan()

    async def credited() -> bool:
        return bool(await recharges(client, ws))

    await work(client, credited)  # this test's round, or the background loop's
    rows = await recharges(client, ws)
    assert [(r["reference"], r["amount_micros"]) for r in rows] == [(made[0].id, 25_000_000)]
    assert len(await intents_of(localstripe, ws["id"])) == 1, "charged once"
    # The client's retry of the dead request answers the same credit.
    resp = await client.post("/v1/wallet/topup", json=topup, headers=crash_headers)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["id"] == rows[0]["id"]
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 35_000_000
    assert len(await intents_of(localstripe, ws["id"])) == 1


async def test_kill_9_in_an_auto_recharge_charges_once_and_credits_once(
    client: Client,
    cards: Callable[[str], Awaitable[str]],
    crashing_gate: Callable[[], str],
    localstripe: str,
    clock: ManualClock,
) -> None:
    from tests.test_auto_recharge import recharges, work

    ws, admin, _ = await workspace_with_card(client, cards)
    await auto_recharge_on(client, admin)
    base = crashing_gate()
    proc_alive = True
    # The debit goes through the crashing Gate, whose automation worker charges at once.
    debit = {"amount_usd": "-6", "type": "adjustment", "description": "crash test"}
    async with client.session.post(
        f"{base}/v1/workspaces/{ws['id']}/adjustments", json=debit, headers=PLATFORM
    ) as resp:
        assert resp.status == 201, await resp.text()
    for _ in range(200):
        if await intents_of(localstripe, ws["id"]):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the kill follows the create at once
    try:
        async with client.session.get(f"{base}/healthz"):
            pass
    except aiohttp.ClientError:
        proc_alive = False
    assert not proc_alive, "gate serve should have died right after the PaymentIntent"
    # This Gate's own worker may already be on it (its clock is past the lease): either way,
    clock.advance(60)  # the dead worker's lease lapses
    automation = client.server.app[AUTOMATION]
    await automation.rescan()

    async def credited() -> bool:
        return bool(await recharges(client, ws))

    await work(client, credited)
    made = await intents_of(localstripe, ws["id"])
    assert [pi.status for pi in made] == ["succeeded"], "charged once"
    rows = await recharges(client, ws)
    assert [(r["reference"], r["amount_micros"]) for r in rows] == [(made[0].id, 20_000_000)]
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 24_000_000


def event_of(event_type: str, obj: dict[str, object]) -> bytes:
    """A Stripe event in its documented envelope, with a fresh id."""
    return orjson.dumps(
        {"id": f"evt_{time.monotonic_ns()}", "object": "event", "api_version": "2024-06-20",
         "created": int(time.time()), "livemode": False, "type": event_type,
         "data": {"object": obj}, "pending_webhooks": 1, "request": {"id": None}}
    )  # fmt: skip


def dispute(
    dispute_id: str, intent_id: str, charge_id: str, cents: int, status: str
) -> dict[str, object]:
    return {"id": dispute_id, "object": "dispute", "amount": cents, "currency": "usd",
            "charge": charge_id, "payment_intent": intent_id, "reason": "fraudulent",
            "status": status, "is_charge_refundable": False, "balance_transactions": [],
            "created": int(time.time()), "livemode": False, "metadata": {}}  # fmt: skip


async def post_event(client: Client, body: bytes) -> dict[str, object]:
    resp = await client.post(WEBHOOK, data=body, headers=signed(body))
    assert resp.status == 200, await resp.text()
    answer: dict[str, object] = await resp.json()
    return answer


async def test_disputes_and_refunds_at_stripe_reach_the_books(
    client: Client, cards: Callable[[str], Awaitable[str]], localstripe: str
) -> None:
    """Issue 20: a charged-back top-up kept its credit; a refund at Stripe changed nothing."""
    ws, admin, _ = await workspace_with_card(client, cards)
    resp = await client.post("/v1/wallet/topup", json={"amount_usd": 20}, headers=admin)
    assert resp.status == 201, await resp.text()
    intent_id = (await resp.json())["reference"]
    http = stripe.AIOHTTPClient()
    api = stripe.StripeClient("sk_test_gate", base_addresses={"api": localstripe}, http_client=http)
    try:
        latest = (await api.v1.payment_intents.retrieve_async(intent_id)).latest_charge
        charge_id = latest if isinstance(latest, str) else str(latest.id)  # localstripe expands

        async def balance() -> int:
            return int((await wallet_json(client, ws["key"]))["balance_micros"])

        assert await balance() == 30_000_000
        first = dispute("dp_1", intent_id, charge_id, 2000, "needs_response")
        opened = event_of("charge.dispute.created", first)
        assert (await post_event(client, opened))["credited"] is True
        assert await balance() == 10_000_000
        again = event_of("charge.dispute.created", first)
        assert (await post_event(client, again))["credited"] is False  # same dispute
        for bad, reason in (
            (dispute("dp_x", "pi_never", "ch_never", 2000, "needs_response"), "unknown_payment"),
            (dispute("dp_y", intent_id, charge_id, 2001, "needs_response"), "mismatch"),
            (dispute("dp_z", intent_id, charge_id, 500, "warning_needs_response"), "inquiry"),
        ):
            answer = await post_event(client, event_of("charge.dispute.created", bad))
            assert answer["ignored"] == reason, answer
        assert await balance() == 10_000_000
        lost = event_of(
            "charge.dispute.closed", dispute("dp_1", intent_id, charge_id, 2000, "lost")
        )
        assert (await post_event(client, lost))["ignored"] == "dispute_not_won"
        won = event_of("charge.dispute.closed", dispute("dp_1", intent_id, charge_id, 2000, "won"))
        assert (await post_event(client, won))["credited"] is True
        assert await balance() == 30_000_000
        # Out of order: closed (won) before created: the pair is booked, net zero, once.
        for event_type, status in (("charge.dispute.closed", "won"),
                                   ("charge.dispute.created", "needs_response")):  # fmt: skip
            body = event_of(event_type, dispute("dp_2", intent_id, charge_id, 700, status))
            await post_event(client, body)
        assert await balance() == 30_000_000
        # A refund made in the Stripe dashboard, then its event (current API: no refund list).
        refund = await api.v1.refunds.create_async({"payment_intent": intent_id, "amount": 500})
        charge = {"id": charge_id, "object": "charge", "amount": 2000, "amount_refunded": 500,
                  "currency": "usd", "payment_intent": intent_id, "refunded": False,
                  "status": "succeeded", "captured": True, "paid": True}  # fmt: skip
        assert (await post_event(client, event_of("charge.refunded", charge)))["credited"] is True
        assert await balance() == 25_000_000
        again = event_of("charge.refunded", charge)  # a retry under a new event id
        assert (await post_event(client, again))["credited"] is False
        assert await balance() == 25_000_000
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    rows = await all_rows(client, ws["key"])
    books = sorted((r["type"], r["amount_micros"], r["reference"]) for r in rows
                   if r["type"] in ("dispute", "refund"))  # fmt: skip
    assert books == sorted([
        ("dispute", -20_000_000, "dispute:dp_1"), ("dispute", 20_000_000, "dispute_won:dp_1"),
        ("dispute", -7_000_000, "dispute:dp_2"), ("dispute", 7_000_000, "dispute_won:dp_2"),
        ("refund", -5_000_000, f"card_refund:{refund.id}"),
    ])  # fmt: skip


async def test_a_refund_through_gate_reaches_stripe_and_its_event_books_nothing_more(
    client: Client, cards: Callable[[str], Awaitable[str]], localstripe: str
) -> None:
    ws, admin, _ = await workspace_with_card(client, cards)
    resp = await client.post("/v1/wallet/topup", json={"amount_usd": 20}, headers=admin)
    topup = await resp.json()
    resp = await client.post(
        f"/v1/wallet/topups/{topup['id']}/refund",
        json={"amount_usd": "7.5"},
        headers=admin | {"Idempotency-Key": "refund-1"},
    )
    assert resp.status == 201, await resp.text()
    http = stripe.AIOHTTPClient()
    api = stripe.StripeClient("sk_test_gate", base_addresses={"api": localstripe}, http_client=http)
    try:
        intent = await api.v1.payment_intents.retrieve_async(topup["reference"])
        latest = intent.latest_charge
        charge_id = latest if isinstance(latest, str) else str(latest.id)
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    refunds = await provider_of(client).refunds_of(charge_id)
    assert [(r["amount"], r["metadata"]["gate_refund"][:3]) for r in refunds] == [(750, "rf_")]
    charge = {"id": charge_id, "object": "charge", "amount": 2000, "amount_refunded": 750,
              "currency": "usd", "payment_intent": topup["reference"], "refunded": False,
              "status": "succeeded"}  # fmt: skip
    assert (await post_event(client, event_of("charge.refunded", charge)))["credited"] is False
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 22_500_000


async def test_a_card_that_asks_for_3d_secure_is_refused_clearly_and_charged_nothing(
    client: Client, cards: Callable[[str], Awaitable[str]], redis: Redis, localstripe: str
) -> None:
    """Issue 20: adding such a card answered 500 internal_error (the verification refunded
    a PaymentIntent that was requires_action)."""
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    pm = await cards("4000002500003155")
    resp = await client.post(
        "/v1/wallet/payment_methods", json={"payment_method_id": pm}, headers=admin
    )
    assert resp.status == 402, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "payment_declined" and "3-D Secure" in error["message"]
    assert await redis.hlen(f"{keys.for_workspace(ws['id']).ws}:methods") == 0
    http = stripe.AIOHTTPClient()
    api = stripe.StripeClient("sk_test_gate", base_addresses={"api": localstripe}, http_client=http)
    try:
        page = await api.v1.payment_intents.list_async({"limit": 100})
        mine = [pi async for pi in page.auto_paging_iter() if pi.payment_method == pm]
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    assert [pi.status for pi in mine] == ["canceled"]

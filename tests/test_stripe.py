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
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import orjson
import pytest
import stripe
from redis.asyncio import Redis

from gate.api.http import METHODS
from gate.store import keys
from gate.wallet.stripe_provider import StripeProvider
from tests.conftest import Client, MakeClient, auth, new_workspace
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


async def test_add_a_card_and_top_up_with_the_default(
    client: Client, cards: Callable[[str], Awaitable[str]]
) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    pm = await cards("4242424242424242")
    resp = await client.post(
        "/v1/wallet/payment_methods", json={"payment_method_id": pm}, headers=admin
    )
    assert resp.status == 201, await resp.text()
    added = await resp.json()
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


def succeeded_event(event_id: str, intent_id: str, cents: int) -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {
                "object": {
                    "id": intent_id,
                    "object": "payment_intent",
                    "amount": cents,
                    "metadata": {},
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

    ws = await new_workspace(client)
    admin = auth(ws["key"])
    pm = await cards("4242424242424242")
    resp = await client.post(
        "/v1/wallet/payment_methods", json={"payment_method_id": pm}, headers=admin
    )
    assert resp.status == 201, await resp.text()
    on = {"auto_recharge": {"enabled": True, "threshold_usd": 5, "topup_usd": 20}}
    resp = await client.patch("/v1/wallet/settings", json=on, headers=admin)
    assert resp.status == 200, await resp.text()
    await adjust(client, ws, "-6")

    async def credited() -> bool:
        return bool(await recharges(client, ws))

    await work(client, credited)
    rows = await recharges(client, ws)
    assert len(rows) == 1
    assert rows[0]["reference"].startswith("pi_")
    assert rows[0]["amount_micros"] == 20_000_000

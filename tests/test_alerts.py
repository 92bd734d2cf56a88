"""Low-balance alerts: edge-triggered in the debiting scripts, mailed by SMTP to a real server."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from redis.asyncio import Redis

from gate.api.http import AUTOMATION
from gate.clock import ManualClock
from gate.store import keys
from tests.conftest import Client, MakeClient, auth, new_workspace
from tests.helpers import adjust, wallet_json


class Inbox:
    """aiosmtpd handler keeping every accepted message."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        self.mails.append((list(envelope.rcpt_tos), message_from_bytes(content)))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
async def client(make_client: MakeClient, smtp: tuple[Inbox, int]) -> Client:
    return await make_client(
        smtp_url=f"smtp://127.0.0.1:{smtp[1]}", mail_from="Gate <alerts@gate.test>"
    )


async def alerts_on(client: Client, ws: dict[str, Any], threshold: str, email: Any) -> None:
    body = {"low_balance_alert": {"enabled": True, "threshold_usd": threshold, "email": email}}
    resp = await client.patch("/v1/wallet/settings", json=body, headers=auth(ws["key"]))
    assert resp.status == 200, await resp.text()


async def drain(client: Client, ws: dict[str, Any]) -> None:
    """Run the automation worker until the workspace has no mail job left."""
    automation = client.server.app[AUTOMATION]
    wallet = keys.for_workspace(ws["id"]).wallet
    for _ in range(100):
        await automation.run_once()
        if int(await automation.ctx.client.hget(wallet, "mail_pending") or 0) <= 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("mail jobs left undelivered")


def parts(message: Message) -> dict[str, str]:
    found = {}
    for part in message.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            found[part.get_content_subtype()] = payload.decode()
    return found


async def event_types(redis: Redis, ws: dict[str, Any]) -> list[str]:
    return [f[b"type"].decode() for _, f in await redis.xrange(keys.for_workspace(ws["id"]).events)]


async def test_alerts_are_edge_triggered_one_mail_per_crossing(
    client: Client, smtp: tuple[Inbox, int], redis: Redis
) -> None:
    inbox, _ = smtp
    ws = await new_workspace(client, "Acme Voice")
    await alerts_on(client, ws, "9.95", ["ops@acme.test", "cfo@acme.test"])
    await adjust(client, ws, "-0.10")  # $9.90: crosses
    await drain(client, ws)
    assert len(inbox.mails) == 1
    assert (await wallet_json(client, ws["key"]))["low_balance_alert"]["state"] == "triggered"
    await adjust(client, ws, "-0.10")  # stays below: nothing
    await drain(client, ws)
    assert len(inbox.mails) == 1
    await adjust(client, ws, "1")  # $10.80: re-armed
    assert (await wallet_json(client, ws["key"]))["low_balance_alert"]["state"] == "armed"
    await adjust(client, ws, "-1")  # $9.80: crosses again
    await drain(client, ws)
    assert len(inbox.mails) == 2
    assert (await event_types(redis, ws)).count("wallet.low_balance") == 2

    rcpts, message = inbox.mails[0]
    assert sorted(rcpts) == ["cfo@acme.test", "ops@acme.test"]
    assert message["Subject"] == "Low balance: Acme Voice has $9.90 left"
    assert message["From"] == "Gate <alerts@gate.test>"
    body = parts(message)
    assert set(body) == {"plain", "html"}
    for text in body.values():
        assert "Acme Voice" in text
        assert "$9.90" in text
        assert "Minutes left" in text
        assert "/v1/wallet/topup" in text
    assert "about 49" in body["plain"]  # $9.90 at the card's $0.20/min


async def test_depleted_mail_at_zero(client: Client, smtp: tuple[Inbox, int], redis: Redis) -> None:
    inbox, _ = smtp
    ws = await new_workspace(client, "Dry Co")
    await alerts_on(client, ws, "5", "ops@dry.test")
    await adjust(client, ws, "-10")  # straight to zero: low balance and depleted
    await drain(client, ws)
    subjects = sorted(m["Subject"] for _, m in inbox.mails)
    assert subjects == [
        "Balance depleted: calls of Dry Co will be refused",
        "Low balance: Dry Co has $0.00 left",
    ]
    types = await event_types(redis, ws)
    assert types.count("wallet.depleted") == 1
    assert types.count("wallet.low_balance") == 1


async def test_smtp_down_keeps_the_mail_for_a_retry(
    client: Client, smtp: tuple[Inbox, int], clock: ManualClock
) -> None:
    inbox, _ = smtp
    ws = await new_workspace(client)
    await alerts_on(client, ws, "9.95", "ops@acme.test")
    automation = client.server.app[AUTOMATION]
    working = automation.mailer
    broken = replace_mailer_port(working, free_port())  # nobody listens there
    automation.mailer = broken
    await adjust(client, ws, "-1")
    await automation.run_once()
    await asyncio.sleep(0.05)
    k = keys.for_workspace(ws["id"])
    assert int(await automation.ctx.client.hget(k.wallet, "mail_pending") or 0) == 1
    automation.mailer = working
    clock.advance(61)  # the first retry is a minute later
    await drain(client, ws)
    assert len(inbox.mails) == 1


def replace_mailer_port(mailer: Any, port: int) -> Any:
    from gate.delivery.mail import SmtpMailer

    return SmtpMailer(f"smtp://127.0.0.1:{port}", mailer.sender, timeout_s=1)


async def test_alerts_are_logged_without_smtp(
    make_client: Callable[..., Awaitable[Client]], caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client()
    ws = await new_workspace(client)
    await alerts_on(client, ws, "9.95", "ops@acme.test")
    with caplog.at_level(logging.WARNING, logger="gate.delivery.mail"):
        await adjust(client, ws, "-1")
        for _ in range(100):
            await client.server.app[AUTOMATION].run_once()
            if any("Low balance" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    assert any(
        "GATE_SMTP_URL unset" in r.getMessage() and "ops@acme.test" in r.getMessage()
        for r in caplog.records
    )


async def test_alert_settings_bad_input(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    bad = [
        {"low_balance_alert": {"enabled": True, "threshold_usd": 5}},  # no address
        {"low_balance_alert": {"email": ["ok@acme.test", "nope"]}},
        {"low_balance_alert": {"threshold_usd": "-1"}},
        {"auto_recharge": {"threshold_usd": 5000}},
        {"auto_recharge": {"topup_usd": "10.001"}},
        {"auto_recharge": {"monthly_cap_usd": "0.5"}},
    ]
    before = await redis.hgetall(keys.for_workspace(ws["id"]).ws)
    for body in bad:
        resp = await client.patch("/v1/wallet/settings", json=body, headers=admin)
        assert resp.status == 400, (body, await resp.text())
        error = (await resp.json())["error"]
        assert error["code"] == "validation_error"
        assert error["message"]
    assert await redis.hgetall(keys.for_workspace(ws["id"]).ws) == before


class FailingMailer:
    """A mail system that refuses every message (an SMTP server rejecting the account)."""

    def __init__(self) -> None:
        self.to: list[str] = []

    async def send(self, message: Any) -> None:
        self.to.append(str(message["To"]))
        raise RuntimeError("550 mailbox unavailable")


async def test_a_declined_recharge_mail_renders_and_later_mail_flows(
    client: Client, smtp: tuple[Inbox, int]
) -> None:
    """Issue 20: render() built every kind's text, so the recharge_failed job (its detail is
    the decline message, not an amount) crashed int() and wedged the workspace's mail."""
    inbox, _ = smtp
    ws = await new_workspace(client)
    await alerts_on(client, ws, "3", "ops@acme.test")
    body = {"payment_method_id": "pm_card_chargeDeclined",
            "auto_recharge": {"enabled": True, "threshold_usd": 5, "topup_usd": 10}}  # fmt: skip
    resp = await client.patch("/v1/wallet/settings", json=body, headers=auth(ws["key"]))
    assert resp.status == 200, await resp.text()
    await adjust(client, ws, "-6")  # $4: crosses the auto-recharge threshold; the card declines
    await drain(client, ws)
    await adjust(client, ws, "-2")  # $2: crosses the low-balance alert, a later mail
    await drain(client, ws)
    subjects = [m["Subject"] for _, m in inbox.mails]
    assert subjects[0].startswith("Auto-recharge failed"), subjects
    assert "Your card was declined." in parts(inbox.mails[0][1])["plain"]
    assert subjects[1].startswith("Low balance"), subjects


async def test_a_mail_that_keeps_failing_is_dead_lettered_and_retried_by_hand(
    client: Client, smtp: tuple[Inbox, int], clock: ManualClock, redis: Redis
) -> None:
    from gate.delivery.mail import MAIL_TRIES, dead_mail, retry_dead

    inbox, _ = smtp
    ws = await new_workspace(client)
    address = f"ops-{ws['id']}@acme.test"  # the session's other workspaces may mail too
    await alerts_on(client, ws, "9.95", address)
    automation = client.server.app[AUTOMATION]
    working, failing = automation.mailer, FailingMailer()
    automation.mailer = failing
    metrics = await (await client.get("/metrics")).text()
    dead_before = _counter(metrics, "gate_mail_dead_total")
    await adjust(client, ws, "-1")
    k = keys.for_workspace(ws["id"])
    for _ in range(50):
        await automation.run_once()
        if int(await redis.hget(k.wallet, "mail_pending") or 0) == 0:
            break  # out of the queue
        clock.advance(3601)  # past the longest back-off
        await automation.look_now(ws["id"])
        await asyncio.sleep(0.01)
    assert failing.to.count(address) == MAIL_TRIES
    assert "mail.dead" in await event_types(redis, ws)
    metrics = await (await client.get("/metrics")).text()
    assert _counter(metrics, "gate_mail_dead_total") == dead_before + 1
    ctx = automation.ctx
    [dead] = await dead_mail(ctx, [ws["id"]])
    assert dead["kind"] == "low_balance" and dead["tries"] == MAIL_TRIES
    assert "550 mailbox unavailable" in dead["error"]
    # Later mail of the workspace flows once the mail system works again.
    automation.mailer = working
    await adjust(client, ws, "-9")  # $0: depleted
    await drain(client, ws)
    assert [m["Subject"].split(":")[0] for _, m in inbox.mails] == ["Balance depleted"]
    # The operator sends the dead one again.
    assert not await retry_dead(ctx, f"{ws['id']}:999")
    assert await retry_dead(ctx, dead["id"])
    await drain(client, ws)
    assert [m["Subject"].split(":")[0] for _, m in inbox.mails][-1] == "Low balance"
    assert await dead_mail(ctx, [ws["id"]]) == []


def _counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0

"""Alert mail: the jobs the wallet's watch queues (lua/_watch.lua), rendered and sent by SMTP.

A debiting script that crosses the low-balance threshold (or reaches zero, or an automatic
charge fails or hits its monthly cap) writes a mail job `mail:<n>` into the wallet hash in the
same atomic step. `deliver` (run by the automation worker, gate/wallet/automation.py) sends
each job to the workspace's alert addresses and deletes it only after the SMTP server took
it: at least once, retried with back-off, never blocking a debit. With no `GATE_SMTP_URL`,
the mail is written to the log instead.

A job cannot wedge the queue: each kind renders only its own fields; a job that cannot be
rendered, or whose send failed MAIL_TRIES times, goes to the workspace's dead-letter hash
(lua/mail_dead-3.lua: a `mail.dead` event, `gate_mail_dead_total`), and the jobs after it
are sent all the same. `gate mail list --dead` shows them, `gate mail retry ID` re-queues one.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from html import escape
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib
import orjson

from gate.context import Context
from gate.metrics import MAIL_DEAD
from gate.money import usd
from gate.store import keys
from gate.store.redis_client import text

log = logging.getLogger("gate.delivery.mail")

RETRY_MS = (60_000, 300_000, 1_800_000, 3_600_000)  # then hourly
MAIL_TRIES = 5  # sends that failed before a job goes to the dead-letter hash


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None:
        """Hand the message to the mail system; raise when it was not taken."""


class LogMailer:
    """No SMTP server configured: alerts are logged, so `make run` needs nothing."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> None:
        self.sent.append(message)
        if len(self.sent) > 100:
            del self.sent[:50]
        log.warning(
            "alert mail (GATE_SMTP_URL unset, not sent) to %s: %s",
            message["To"],
            message["Subject"],
        )


class SmtpMailer:
    """Sends through an SMTP server: smtp://user:password@host:port (STARTTLS when offered)
    or smtps://... (TLS from the first byte)."""

    def __init__(self, url: str, sender: str, *, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"GATE_SMTP_URL={url!r}: expected smtp://host:port or smtps://...")
        self.host = parts.hostname
        self.tls = parts.scheme == "smtps"
        self.port = parts.port or (465 if self.tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.sender = sender
        self.timeout_s = timeout_s

    async def send(self, message: EmailMessage) -> None:
        if "From" not in message:
            message["From"] = self.sender
        await aiosmtplib.send(
            message,
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.tls,
            start_tls=None if not self.tls else False,
            tls_context=ssl.create_default_context() if self.tls else None,
            timeout=self.timeout_s,
        )


@dataclass(frozen=True, slots=True)
class Job:
    """One queued alert, as lua/_watch.lua wrote it."""

    number: int
    kind: str  # low_balance | depleted | recharge_failed | capped
    at_ms: int
    available_micros: int
    balance_micros: int
    detail: str  # threshold micros, the decline message or the cap, by kind

    @classmethod
    def parse(cls, number: int, raw: str) -> Job:
        kind, at, avail, balance, detail = raw.split("|", 4)
        return cls(number, kind, int(at), int(avail), int(balance), detail)


_SUBJECTS = {
    "low_balance": "Low balance: {name} has {available} left",
    "depleted": "Balance depleted: calls of {name} will be refused",
    "recharge_failed": "Auto-recharge failed for {name}",
    "capped": "Auto-recharge paused for {name}: monthly cap reached",
}


def _usd(micros: str) -> str:
    return f"${usd(int(micros)):,.2f}"


# What each kind says: only its own fields are read (a decline message is no amount).
_LINES: dict[str, Callable[[Job, str], str]] = {
    "low_balance": lambda job, name: (
        f"The available balance of {name} fell below your alert threshold of "
        f"{_usd(job.detail or '0')}."
    ),
    "depleted": lambda job, name: f"{name} has no money left: new outbound calls are refused.",
    "recharge_failed": lambda job, name: (
        f"We could not charge your card for {name}'s auto-recharge: {job.detail} "
        "We will try again later."
    ),
    "capped": lambda job, name: (
        f"{name}'s automatic charges reached their monthly cap of {_usd(job.detail or '0')}; "
        "auto-recharge stops until next month or until you raise the cap."
    ),
}


def render(
    job: Job, workspace_name: str, recipients: list[str], minutes_left: int | None, sender: str
) -> EmailMessage:
    """The mail of one job: plain text and HTML, naming the workspace, the balance, the
    minutes left and how to top up. Raises (KeyError, ValueError) for a malformed job."""
    available = f"${usd(job.available_micros):,.2f}"
    balance = f"${usd(job.balance_micros):,.2f}"
    line = _LINES[job.kind](job, workspace_name)
    minutes = "unknown" if minutes_left is None else f"about {minutes_left}"
    how = (
        "To top up, open the Wallet page and choose Add funds, or POST /v1/wallet/topup "
        "with an amount from $1 to $1,000. Auto-recharge (Wallet > Settings) refills the "
        "wallet by itself."
    )
    facts = [
        ("Workspace", workspace_name),
        ("Balance", balance),
        ("Available", available),
        ("Minutes left", minutes),
    ]
    plain = "\n".join([line, "", *(f"{k}: {v}" for k, v in facts), "", how, "", "-- Gate"])
    rows = "".join(f"<tr><th align=left>{k}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    html = (
        f"<html><body><p>{escape(line)}</p><table>{rows}</table><p>{escape(how)}</p></body></html>"
    )
    message = EmailMessage()
    message["Subject"] = _SUBJECTS[job.kind].format(name=workspace_name, available=available)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message.set_content(plain)
    message.add_alternative(html, subtype="html")
    return message


def recipients_of(raw: str | None) -> list[str]:
    """The alert addresses stored as one comma-separated string."""
    return [a.strip() for a in (raw or "").split(",") if a.strip()]


async def deliver(
    ctx: Context, mailer: Mailer, workspace_id: str, per_min_micros: int | None
) -> int | None:
    """Send the workspace's queued alert mails; returns when a retry falls due (ms) or None."""
    k = keys.for_workspace(workspace_id)
    raw = {text(f): text(v) for f, v in (await ctx.client.hgetall(k.wallet)).items()}
    jobs = sorted(
        (Job.parse(int(f[5:]), v) for f, v in raw.items() if f.startswith("mail:")),
        key=lambda j: j.number,
    )
    if not jobs:
        return None
    name, email = await ctx.client.hmget(k.ws, ["name", "lb_email"])
    recipients = recipients_of(text(email) if email else None)
    now = ctx.clock.now_ms()
    next_due: int | None = None
    for job in jobs:
        tries_raw = raw.get(f"mtry:{job.number}", "0:0")
        tries, not_before = (int(x) for x in tries_raw.split(":"))
        if not_before > now:
            next_due = not_before if next_due is None else min(next_due, not_before)
            continue
        if not recipients:  # the address was removed: nobody to tell
            await _done(ctx, workspace_id, job.number)
            continue
        minutes = None
        if per_min_micros:
            minutes = max(job.available_micros, 0) // per_min_micros
        title = text(name) if name else workspace_id
        try:
            message = render(job, title, recipients, minutes, ctx.settings.mail_from)
        except (KeyError, ValueError) as err:  # retrying cannot fix a job that cannot render
            await _dead(ctx, workspace_id, job, tries, f"cannot render: {err!r}")
            continue
        try:
            await mailer.send(message)
        except Exception as err:  # any failure of this one send is this job's alone
            if tries + 1 >= MAIL_TRIES:
                await _dead(ctx, workspace_id, job, tries + 1, f"{type(err).__name__}: {err}")
                continue
            delay = RETRY_MS[min(tries, len(RETRY_MS) - 1)]
            log.warning("alert mail of %s failed, retrying: %s", workspace_id, err)
            await ctx.client.hset(k.wallet, f"mtry:{job.number}", f"{tries + 1}:{now + delay}")
            next_due = now + delay if next_due is None else min(next_due, now + delay)
            continue
        await _done(ctx, workspace_id, job.number)
    return next_due


async def _done(ctx: Context, workspace_id: str, number: int) -> None:
    k = keys.for_workspace(workspace_id)
    async with ctx.client.pipeline(transaction=True) as pipe:
        pipe.hdel(k.wallet, f"mail:{number}", f"mtry:{number}")
        pipe.hincrby(k.wallet, "mail_pending", -1)
        await pipe.execute()


def dead_key(workspace_id: str) -> str:
    """Hash of the workspace's dead-lettered mail jobs: n -> JSON (lua/mail_dead-3.lua)."""
    return f"{keys.for_workspace(workspace_id).ws}:mail_dead"


async def _dead(ctx: Context, workspace_id: str, job: Job, tries: int, error: str) -> None:
    k = keys.for_workspace(workspace_id)
    log.error("alert mail %s of %s is dead-lettered after %d tries: %s (gate mail retry "
              "%s:%d sends it again)", job.kind, workspace_id, tries, error, workspace_id,
              job.number)  # fmt: skip
    reply = await ctx.scripts.call(
        "mail_dead",
        [k.wallet, dead_key(workspace_id), k.events],
        [ctx.clock.now_ms(), job.number, tries, error[:500]],
    )
    if int(reply[0]) == 0:
        MAIL_DEAD.inc()
        ctx.notifier.events(workspace_id, automation=False)


async def dead_mail(ctx: Context, workspace_ids: list[str]) -> list[dict[str, Any]]:
    """The dead-lettered mail jobs of these workspaces, oldest first, each with its retry id."""
    found = []
    for workspace_id in workspace_ids:
        for number, raw in (await ctx.client.hgetall(dead_key(workspace_id))).items():
            record = orjson.loads(raw)
            found.append(
                {"id": f"{workspace_id}:{text(number)}", "kind": record["job"].split("|", 1)[0]}
                | record
            )
    return sorted(found, key=lambda r: (r["dead_at_ms"], r["id"]))


async def retry_dead(ctx: Context, mail_id: str) -> bool:
    """Queue the dead-lettered job `<workspace>:<n>` again; False when there is none."""
    workspace_id, _, number = mail_id.rpartition(":")
    if not workspace_id or not number.isdigit():
        return False
    k = keys.for_workspace(workspace_id)
    reply = await ctx.scripts.call("mail_retry", [k.wallet, dead_key(workspace_id)], [number])
    if int(reply[0]) != 0:
        return False
    ctx.notifier.events(workspace_id)
    return True

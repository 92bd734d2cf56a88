"""The wallet's automation worker: charges auto-recharges and sends alert mail.

What fires is decided inside the debiting scripts (lua/_watch.lua): an auto-recharge attempt
(ar_state "charging") or a mail job in the wallet hash. This worker does the outside part.
How it finds work: domain code's event notifications (every firing writes an event) mark the
workspace; a cheap read of its wallet says whether anything is due; due workspaces go into a
global index (gate/store/due.py) that any Gate process claims with a lease, so a back-off
retry or the work of a process that died is found by another. A periodic rescan rebuilds
the index from the wallets themselves.

One recharge, step by step: lua/auto_recharge_claim-3.lua leases the attempt and fixes its
amount; the provider charges the default payment method with the idempotency key
`ar_<workspace>_<attempt>`; lua/auto_recharge_settle-7.lua credits it once by payment id. A
crash after the charge leaves the attempt "charging" with its amount: after the lease, any
worker claims it again and charges with the same key (the provider answers with the same
payment), and the settle credits it once. Declines back off (1 min, 10 min, 1 h, then daily).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial

from gate.context import Context
from gate.delivery import mail
from gate.store import keys
from gate.store.circuit import is_unavailable
from gate.store.due import DueIndex
from gate.store.redis_client import text
from gate.tasks import cancel, survive, wait_for_wake
from gate.wallet.payments import PaymentError, PaymentProvider

log = logging.getLogger("gate.wallet.automation")

BACKOFF_MS = (60_000, 600_000, 3_600_000, 86_400_000)  # after 1, 2, 3, 4+ declines
ERROR_RETRY_MS = 60_000  # an error with an unknown outcome: the same attempt again
DEFAULT_CAP_MICROS = 1_000_000_000  # $1,000 of automatic charges a month
CLAIM = 100


def backoff_ms(fails: int) -> int:
    """How long to wait after the `fails`-th decline in a row."""
    return BACKOFF_MS[min(max(fails, 1), len(BACKOFF_MS)) - 1]


def month_of(ms: int) -> tuple[str, int]:
    """("YYYY-MM", first ms of the next month) of a time, in UTC."""
    at = datetime.fromtimestamp(ms / 1000, UTC)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start.strftime("%Y-%m"), int(nxt.timestamp() * 1000)


def due_of(fields: list[bytes | str | None], now_ms: int) -> int | None:
    """When a wallet needs the worker, from HMGET ar_state, ar_next, ar_until, mail_pending."""
    state, next_ms, until_ms, pending = (text(f) if f is not None else None for f in fields)
    due: int | None = None
    if state == "charging":
        due = int(until_ms) if until_ms else now_ms
    elif state == "failed" and next_ms:
        due = int(next_ms)
    if pending and int(pending) > 0:
        due = now_ms if due is None else min(due, now_ms)
    return due


_WATCHED = ("ar_state", "ar_next", "ar_until", "mail_pending")


class Automation:
    """Runs auto-recharge attempts and alert mail for every workspace, in any Gate process."""

    def __init__(
        self,
        ctx: Context,
        payments: PaymentProvider,
        mailer: mail.Mailer,
        *,
        per_min_micros: Callable[[], int | None] = lambda: None,
        recover: Callable[[str], Awaitable[int]] | None = None,
        lease_ms: int = 30_000,
        poll_ms: int = 200,
        rescan_s: float = 30.0,
    ) -> None:
        self.ctx = ctx
        self.payments = payments
        self.mailer = mailer
        self.per_min_micros = per_min_micros
        self.recover = recover  # finishes top-ups and refunds that died half-way
        self.index = DueIndex(ctx.scripts, keys.AUTOMATION_INDEX)
        self.owner = f"auto-{uuid.uuid4().hex[:12]}"
        self.lease_ms = lease_ms
        self.poll_s = poll_ms / 1000
        self.rescan_s = rescan_s
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # Workspaces this process works on now: a notify may put one back in the index while
        # its work runs, and two rounds of one owner must never charge side by side.
        self._active: set[str] = set()
        self.charges = 0  # automatic charges made by this process (tests, logs)

    def notify(self, workspace_id: str) -> None:
        """The workspace wrote events: look whether its wallet needs the worker."""
        self._dirty.add(workspace_id)
        self._wake.set()

    async def look_now(self, workspace_id: str) -> None:
        """Settings changed: claim the workspace now (it may need a charge at once)."""
        await self.index.notify_many({workspace_id: self.ctx.clock.now_ms()})
        self._wake.set()

    async def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._loop(), name="gate-automation"),
            asyncio.create_task(self._rescan_loop(), name="gate-automation-rescan"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        await cancel(self._tasks)
        self._tasks = []

    async def run_once(self) -> int:
        """Work every workspace due now; returns how many were worked (tests call this)."""
        await self._take_dirty()
        worked = 0
        while True:
            claimed = await self.index.claim(self.ctx.clock.now_ms(), self.lease_ms, CLAIM)
            if not claimed:
                return worked
            await asyncio.gather(*(self._work(ws) for ws, _ in claimed if ws not in self._active))
            worked += len(claimed)
            if len(claimed) < CLAIM:
                return worked

    async def rescan(self) -> None:
        """Put every workspace whose wallet has due work back in the index."""
        ids = sorted(text(m) for m in await self.ctx.client.smembers(keys.WORKSPACES))
        for i in range(0, len(ids), 500):
            await self._hint(ids[i : i + 500])

    async def _hint(self, ids: list[str]) -> None:
        if not ids:
            return
        async with self.ctx.client.pipeline(transaction=False) as pipe:
            for workspace_id in ids:
                pipe.hmget(keys.for_workspace(workspace_id).wallet, _WATCHED)
                pipe.hlen(f"{keys.for_workspace(workspace_id).ws}:pending_topups")
                pipe.hlen(f"{keys.for_workspace(workspace_id).ws}:pending_refunds")
            replies = await pipe.execute()
        now = self.ctx.clock.now_ms()
        due = {}
        for i, workspace_id in enumerate(ids):
            at = due_of(replies[3 * i], now)
            if (replies[3 * i + 1] or replies[3 * i + 2]) and self.recover is not None:
                at = now  # a top-up or refund half-way (its request died, or still runs)
            if at is not None:
                due[workspace_id] = at
        await self.index.notify_many(due)

    async def _take_dirty(self) -> None:
        if self._dirty:
            dirty, self._dirty = self._dirty, set()
            try:
                await self._hint(sorted(dirty))
            except BaseException:
                self._dirty |= dirty
                raise

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            if await survive(log, "automation round", self.run_once):
                await wait_for_wake(self._wake, self.poll_s)

    async def _rescan_loop(self) -> None:
        while not self._stopping:
            await survive(log, "automation rescan", self.rescan)
            await asyncio.sleep(self.rescan_s)

    async def _work(self, workspace_id: str) -> None:
        self._active.add(workspace_id)
        try:
            if self.recover is not None:
                await self.recover(workspace_id)
            due = await self.recharge(workspace_id)
            mail_due = await mail.deliver(
                self.ctx, self.mailer, workspace_id, self.per_min_micros()
            )
            if mail_due is not None:
                due = mail_due if due is None else min(due, mail_due)
            await self.index.settle(workspace_id, due, partial(self._head, workspace_id))
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the index keeps the lease as a retry time
            if not is_unavailable(err):  # an outage is logged once, by the circuit
                log.exception("automation of %s failed; retrying after the lease", workspace_id)
        finally:
            self._active.discard(workspace_id)

    async def _head(self, workspace_id: str) -> int | None:
        fields = await self.ctx.client.hmget(keys.for_workspace(workspace_id).wallet, _WATCHED)
        return due_of(fields, self.ctx.clock.now_ms())

    async def recharge(self, workspace_id: str) -> int | None:
        """Make the automatic charges the wallet needs now; returns when to look again."""
        k = keys.for_workspace(workspace_id)
        for _ in range(3):  # a settle can start the next attempt (money still short)
            now = self.ctx.clock.now_ms()
            month, next_month = month_of(now)
            reply = await self.ctx.scripts.call(
                "auto_recharge_claim",
                [k.ws, k.wallet, k.events],
                [now, self.owner, self.lease_ms, month, next_month, DEFAULT_CAP_MICROS],
            )
            if int(reply[0]) != 0:
                return None  # the workspace is gone
            action = text(reply[1])
            if action != "charge":
                if action == "capped":
                    self.ctx.notifier.events(workspace_id)
                nxt = int(reply[2])
                return None if nxt < 0 else nxt
            self.ctx.notifier.events(workspace_id)
            attempt, amount, method = text(reply[2]), int(reply[3]), text(reply[4])
            fails = int(reply[5])
            key = f"ar_{workspace_id}_{attempt}"
            try:
                payment = await self.payments.charge(workspace_id, method, amount, key)
            except PaymentError as err:
                declined = err.declined
                message = str(err)
            except Exception as err:  # the outcome is unknown: retry the same key later
                log.warning("auto-recharge charge of %s failed: %r", workspace_id, err)
                declined, message = False, f"payment provider error: {type(err).__name__}"
            else:
                self.charges += 1
                await self.ctx.scripts.call(
                    "auto_recharge_settle",
                    [k.ws, k.wallet, k.ledger, k.events, k.refs, k.cuts, k.due],
                    [self.ctx.clock.now_ms(), attempt, amount, payment.id, month, method],
                )
                self.ctx.notifier.events(workspace_id)
                self.ctx.notifier.ticks(workspace_id, self.ctx.clock.now_ms())
                continue
            now = self.ctx.clock.now_ms()
            wait = backoff_ms(fails + 1) if declined else ERROR_RETRY_MS
            await self.ctx.scripts.call(
                "auto_recharge_fail",
                [k.ws, k.wallet, k.events],
                [now, attempt, self.owner, 1 if declined else 0, now + wait, message],
            )
            self.ctx.notifier.events(workspace_id)
            return now + wait
        return self.ctx.clock.now_ms()

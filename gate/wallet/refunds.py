"""Refund a card top-up to the card it came from (POST /v1/wallet/topups/{id}/refund).

Rules (docs/payments.md): the platform key may refund any card top-up; a workspace admin only
within GATE_REFUND_WINDOW_DAYS of it. A refund is never more than what of the top-up is not
refunded yet, nor more than the wallet's available (unspent) money. One refund per
Idempotency-Key; refunds of one workspace run one at a time.

Order, so that money is never both in the wallet and back on the card: the wallet is debited
first (a `refund` row, lua/post-8.lua with floor "available", which is the unspent-balance
check made atomically), then the provider refunds with Gate's refund id as its idempotency
key and metadata (`gate_refund`, which the charge.refunded webhook skips, as booked). A
provider that refuses gives the money back with a second row. The refund is recorded in
`gate:{ws}:pending_refunds` before the debit and removed once the provider answered; the
automation worker's recovery pass (`recover`) finishes one whose request died in between.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable

import orjson

from gate.context import Context
from gate.errors import (
    Conflict,
    GateError,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InsufficientBalance,
    NotFound,
    PaymentDeclined,
    ValidationFailed,
)
from gate.history import ledger
from gate.money import usd
from gate.store import keys
from gate.store.redis_client import text
from gate.store.scripts import Code
from gate.wallet.payments import PaymentError, PaymentProvider
from gate.wallet.service import (
    IDEMPOTENCY_LEASE_MS,
    IDEMPOTENCY_TTL_MS,
    Wallet,
    body_hash,
    idem_claim,
    idem_fail,
    post,
)

log = logging.getLogger("gate.wallet.refunds")

LOCK_MS = 30_000  # one refund of a workspace at a time; a dead holder's lock lapses


def _refunded_key(workspace_id: str) -> str:
    """Hash: payment id -> micros Gate refunded of it so far."""
    return f"{keys.for_workspace(workspace_id).ws}:refunded"


def _pending_key(workspace_id: str) -> str:
    """Hash: Gate refund id -> JSON (payment, micros): debited, provider not yet answered."""
    return f"{keys.for_workspace(workspace_id).ws}:pending_refunds"


class Refunds:
    def __init__(self, ctx: Context, wallet: Wallet, payments: PaymentProvider) -> None:
        self.ctx = ctx
        self.wallet = wallet
        self.payments = payments

    async def refund_topup(
        self,
        workspace_id: str,
        row_id: str,
        amount_micros: int | None,
        idempotency_key: str | None,
        *,
        by_platform: bool,
    ) -> ledger.Row:
        """Refund (part of) a card top-up; returns the `refund` ledger row."""
        topup = await self._topup(workspace_id, row_id, by_platform)
        key = idempotency_key or f"auto-{secrets.token_hex(12)}"
        lock = f"{keys.for_workspace(workspace_id).ws}:refund_lock"
        if not await self.ctx.client.set(lock, key, nx=True, px=LOCK_MS):
            raise Conflict(
                "another refund of this workspace is being made right now; retry in a moment"
            )
        try:
            return await self._claimed(workspace_id, topup, amount_micros, key)
        finally:
            await self.ctx.client.delete(lock)

    async def _claimed(
        self, workspace_id: str, topup: ledger.Row, amount_micros: int | None, key: str
    ) -> ledger.Row:
        idem = keys.for_workspace(workspace_id).idem(f"refund:{key}")
        digest = body_hash({"row": topup.id, "amount_micros": amount_micros})
        claim = await idem_claim(
            self.ctx, workspace_id, idem, self.ctx.clock.now_ms(), digest,
            IDEMPOTENCY_LEASE_MS, IDEMPOTENCY_TTL_MS,
        )  # fmt: skip
        if claim.code == Code.REPEAT:
            assert claim.result is not None
            if claim.state == "failed":
                raise PaymentDeclined(orjson.loads(claim.result)["message"])
            return await self.wallet.row(workspace_id, claim.result)
        if claim.code == Code.IDEMPOTENCY_KEY_REUSED:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with another refund; use a new key"
            )
        if claim.code == Code.IN_PROGRESS:
            raise IdempotencyKeyInProgress(
                "a refund with this Idempotency-Key is still being processed; retry later"
            )
        if claim.code != Code.OK:
            raise NotFound("no such workspace")
        return await self._refund(workspace_id, topup, amount_micros, key, idem, digest)

    async def _topup(self, workspace_id: str, row_id: str, by_platform: bool) -> ledger.Row:
        row = await self.wallet.row(workspace_id, row_id)  # 404 when there is none
        if row.type != "recharge" or row.amount_micros <= 0 or row.extra.get("source") not in (
            "card", "auto_recharge",
        ):  # fmt: skip
            raise ValidationFailed(
                f"ledger row {row_id} is not a card top-up; only top-ups and auto-recharges "
                "paid by card can be refunded to the card (GET /v1/wallet/transactions?type="
                "recharge lists them)",
                field="id",
            )
        window_ms = self.ctx.settings.refund_window_days * 86_400_000
        if not by_platform and self.ctx.clock.now_ms() - row.at_ms > window_ms:
            raise ValidationFailed(
                f"a workspace admin may refund a top-up within "
                f"{self.ctx.settings.refund_window_days} days (GATE_REFUND_WINDOW_DAYS); "
                "this one is older: ask the platform operator",
                field="id",
            )
        return row

    async def _refund(
        self,
        workspace_id: str,
        topup: ledger.Row,
        amount: int | None,
        key: str,
        idem: str,
        digest: str,
    ) -> ledger.Row:
        payment_id = topup.reference
        done = int(await self.ctx.client.hget(_refunded_key(workspace_id), payment_id) or 0)
        left = topup.amount_micros - done
        micros = left if amount is None else amount
        if not 0 < micros <= left or micros % 10_000:
            await self.ctx.client.delete(idem)  # nothing happened: the key may be used again
            raise ValidationFailed(
                f"amount_usd must be from 0.01 to {usd(left)} in whole cents: what of this "
                f"top-up of {usd(topup.amount_micros)} is not refunded yet",
                field="amount_usd",
            )
        refund_id = "rf_" + hashlib.sha256(f"{workspace_id}:{key}".encode()).hexdigest()[:20]
        record = {"payment_id": payment_id, "micros": micros, "idem": idem, "digest": digest}
        # Written ahead, counted before the debit: recover() finishes from any point after.
        await self.ctx.client.hset(_pending_key(workspace_id), refund_id, orjson.dumps(record))
        await self.ctx.client.hincrby(_refunded_key(workspace_id), payment_id, micros)
        return await self._settle(workspace_id, refund_id, payment_id, micros, idem)

    async def _settle(
        self, workspace_id: str, refund_id: str, payment_id: str, micros: int, idem: str
    ) -> ledger.Row:
        """Debit (once, by reference), refund at the provider (once, by refund id), finish."""
        posted = await post(
            self.ctx, workspace_id, now_ms=self.ctx.clock.now_ms(), amount_micros=-micros,
            type="refund", description=f"Refund of top-up {payment_id} to the card",
            reference=f"topup_refund:{refund_id}", floor="available",
            extra=[("source", "card"), ("payment_id", payment_id), ("refund_id", refund_id)],
        )  # fmt: skip
        if posted.code == Code.INSUFFICIENT:
            await self.ctx.client.hincrby(_refunded_key(workspace_id), payment_id, -micros)
            await self.ctx.client.hdel(_pending_key(workspace_id), refund_id)
            await self.ctx.client.delete(idem)  # nothing happened: the key may be used again
            assert posted.balance_micros is not None and posted.reserved_micros is not None
            available = posted.balance_micros - posted.reserved_micros
            raise InsufficientBalance(
                "a refund may not exceed the wallet's unspent (available) balance; refund "
                "less, or wait for live calls to end",
                balance_usd=usd(posted.balance_micros),
                required_usd=usd(micros),
                available_usd=usd(available),
            )
        if posted.code == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        assert posted.row_id is not None
        self.ctx.notifier.events(workspace_id)
        try:
            await self.payments.refund(workspace_id, payment_id, micros, refund_id)
        except PaymentError as err:
            await self._undo(workspace_id, payment_id, micros, refund_id)
            message = f"the provider refused the refund: {err} The wallet was credited back."
            await idem_fail(self.ctx, idem, orjson.dumps({"message": message}).decode())
            raise PaymentDeclined(message) from err
        await self.ctx.client.hset(idem, mapping={"state": "done", "result": posted.row_id})
        await self.ctx.client.hdel(_pending_key(workspace_id), refund_id)
        return await self.wallet.row(workspace_id, posted.row_id)

    async def recover(self, workspace_id: str) -> int:
        """Finish refunds whose request died after it was written ahead (the automation
        worker's recovery pass); returns how many were finished now."""
        lock = f"{keys.for_workspace(workspace_id).ws}:refund_lock"
        finished = 0
        for refund_id, record in (await self.pending(workspace_id)).items():
            idem = str(record["idem"])
            claim = await idem_claim(
                self.ctx, workspace_id, idem, self.ctx.clock.now_ms(), str(record["digest"]),
                IDEMPOTENCY_LEASE_MS, IDEMPOTENCY_TTL_MS,
            )  # fmt: skip
            if claim.code == Code.IN_PROGRESS:
                continue  # its request is still alive
            if claim.code != Code.OK:  # finished before the record was removed
                await self.ctx.client.hdel(_pending_key(workspace_id), refund_id)
                continue
            if not await self.ctx.client.set(lock, refund_id, nx=True, px=LOCK_MS):
                continue
            try:
                await self._settle(
                    workspace_id, refund_id, str(record["payment_id"]), int(str(record["micros"])),
                    idem,
                )  # fmt: skip
                finished += 1
            except GateError as err:  # refused: its key answers the refusal
                log.warning("refund %s of %s not finished: %s", refund_id, workspace_id, err)
            finally:
                await self.ctx.client.delete(lock)
        return finished

    async def _undo(self, workspace_id: str, payment_id: str, micros: int, refund_id: str) -> None:
        await post(
            self.ctx, workspace_id, now_ms=self.ctx.clock.now_ms(), amount_micros=micros,
            type="refund", description=f"Refund of top-up {payment_id} refused by the provider",
            reference=f"topup_refund_undo:{refund_id}", floor="none",
            extra=[("source", "card"), ("payment_id", payment_id), ("refund_id", refund_id)],
        )  # fmt: skip
        await self.ctx.client.hincrby(_refunded_key(workspace_id), payment_id, -micros)
        await self.ctx.client.hdel(_pending_key(workspace_id), refund_id)
        self.ctx.notifier.events(workspace_id)

    async def pending(self, workspace_id: str) -> dict[str, dict[str, object]]:
        """Refunds debited whose provider answer never came (a crash in between)."""
        raw = await self.ctx.client.hgetall(_pending_key(workspace_id))
        return {text(k): orjson.loads(v) for k, v in raw.items()}


def recovery(wallet: Wallet, refunds: Refunds) -> Callable[[str], Awaitable[int]]:
    """The automation worker's recovery pass: top-ups, then refunds, that died half-way."""

    async def recover(workspace_id: str) -> int:
        return await wallet.recover_topups(workspace_id) + await refunds.recover(workspace_id)

    return recover

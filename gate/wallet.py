"""The wallet: balance view, top-ups through a payment provider, adjustments, settings."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from gate import keys, ledger
from gate.context import Context
from gate.errors import (
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InsufficientBalance,
    NotFound,
    PaymentDeclined,
    ValidationFailed,
)
from gate.money import usd
from gate.payments import PaymentError, PaymentProvider
from gate.redis_client import entries
from gate.scripts import Code
from gate.workspaces import Workspace, Workspaces

TOPUP_MIN_MICROS = 1_000_000
TOPUP_MAX_MICROS = 1_000_000_000
TOPUP_PRESETS_USD = (10, 25, 50, 100)
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
IDEMPOTENCY_LEASE_MS = 30_000
_IN_PROGRESS_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class WalletView:
    workspace: Workspace
    balance_micros: int
    reserved_micros: int
    status: str
    live_calls: int
    version: int

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.reserved_micros

    @property
    def etag(self) -> str:
        return f'W/"{self.workspace.id}-{self.version}"'

    def to_json(self, per_min_micros: int | None) -> dict[str, Any]:
        raw = self.workspace.raw
        estimate = None
        if per_min_micros:
            estimate = max(self.available_micros, 0) // per_min_micros
        return {
            "balance_usd": usd(self.balance_micros),
            "currency": "USD",
            "auto_recharge": {
                "enabled": raw.get("ar_enabled") == "1",
                "threshold_usd": _opt_usd(raw.get("ar_threshold_micros")),
                "topup_usd": _opt_usd(raw.get("ar_topup_micros")),
            },
            "balance_micros": self.balance_micros,
            "reserved_usd": usd(self.reserved_micros),
            "reserved_micros": self.reserved_micros,
            "available_usd": usd(self.available_micros),
            "available_micros": self.available_micros,
            "status": self.status,
            "low_balance_alert": {
                "enabled": raw.get("lb_enabled") == "1",
                "threshold_usd": _opt_usd(raw.get("lb_threshold_micros")),
                "email": raw.get("lb_email"),
            },
            "payment_method_id": raw.get("payment_method_id"),
            "live_calls": self.live_calls,
            "minutes_left_estimate": estimate,
        }


def _opt_usd(value: str | None) -> float | None:
    return None if value is None else usd(int(value))


def body_hash(parts: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Wallet:
    def __init__(self, ctx: Context, workspaces: Workspaces, payments: PaymentProvider) -> None:
        self.ctx = ctx
        self.workspaces = workspaces
        self.payments = payments

    async def view(self, workspace_id: str) -> WalletView:
        k = keys.for_workspace(workspace_id)
        async with self.ctx.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.ws)
            pipe.hmget(k.wallet, "balance", "reserved", "status", "version")
            pipe.hlen(k.live)
            ws_raw, w, live = await pipe.execute()
        if not ws_raw:
            raise NotFound("no such workspace")
        return WalletView(
            workspace=self.workspaces.parse(ws_raw),
            balance_micros=int(w[0]),
            reserved_micros=int(w[1]),
            status=w[2].decode(),
            live_calls=int(live),
            version=int(w[3]),
        )

    async def payments_check(self, workspace_id: str, payment_method_id: str) -> None:
        """400 unless the provider can charge this payment method."""
        try:
            await self.payments.check_method(workspace_id, payment_method_id)
        except PaymentError as err:
            raise ValidationFailed(str(err), field="payment_method_id") from err

    async def row(self, workspace_id: str, row_id: str) -> ledger.Row:
        found = entries(
            await self.ctx.client.xrange(keys.for_workspace(workspace_id).ledger, row_id, row_id)
        )
        return ledger.Row.parse(*found[0])

    async def topup(
        self,
        workspace_id: str,
        amount_micros: int,
        payment_method_id: str,
        idempotency_key: str | None,
    ) -> ledger.Row:
        """Charge the method and credit the wallet once per Idempotency-Key."""
        if not TOPUP_MIN_MICROS <= amount_micros <= TOPUP_MAX_MICROS:
            raise ValidationFailed(
                "amount_usd must be from 1 to 1000 (presets: 10, 25, 50, 100)",
                field="amount_usd",
            )
        await self.payments_check(workspace_id, payment_method_id)
        key = idempotency_key or f"auto-{secrets.token_hex(12)}"
        k = keys.for_workspace(workspace_id)
        idem = k.idem(f"topup:{key}")
        digest = body_hash({"amount_micros": amount_micros, "pm": payment_method_id})
        deadline = asyncio.get_running_loop().time() + _IN_PROGRESS_WAIT_S
        while True:
            now = self.ctx.clock.now_ms()
            reply = await self.ctx.scripts.call(
                "idem_claim",
                [idem, k.ws],
                [now, digest, IDEMPOTENCY_LEASE_MS, IDEMPOTENCY_TTL_MS],
            )
            code = reply[0]
            if code == Code.OK:
                break
            if code == Code.REPEAT:
                state, result = reply[1].decode(), reply[2].decode()
                if state == "failed":
                    raise PaymentDeclined(orjson.loads(result)["message"])
                return await self.row(workspace_id, result)
            if code == Code.NO_WORKSPACE:
                raise NotFound("no such workspace")
            if code == Code.IDEMPOTENCY_KEY_REUSED:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used with another request body; "
                    "use a new key for a new top-up"
                )
            # Another request holds the claim: wait for its answer rather than fail fast.
            if asyncio.get_running_loop().time() > deadline:
                raise IdempotencyKeyInProgress(
                    "a request with this Idempotency-Key is still being processed; retry later"
                )
            await asyncio.sleep(0.02)

        try:
            payment = await self.payments.charge(
                workspace_id, payment_method_id, amount_micros, key
            )
        except PaymentError as err:
            message = str(err)
            await self.ctx.scripts.call(
                "idem_fail", [idem], [orjson.dumps({"message": message}).decode()]
            )
            raise PaymentDeclined(
                message + " Use another payment method, or try again later."
            ) from err
        reply = await self.ctx.scripts.call(
            "post",
            k.post_keys(idem),
            [
                self.ctx.clock.now_ms(),
                amount_micros,
                "recharge",
                f"Wallet top-up ({payment_method_id})",
                payment.id,
                "none",
                "source",
                "card",
                "payment_method_id",
                payment_method_id,
            ],
        )
        self._posted(workspace_id, reply)
        await self.workspaces.update(workspace_id, {"payment_method_id": payment_method_id})
        return await self.row(workspace_id, reply[1].decode())

    async def adjust(
        self,
        workspace_id: str,
        amount_micros: int,
        kind: str,
        description: str,
        reference: str | None,
    ) -> tuple[ledger.Row, bool]:
        """Post an operator's adjustment or refund; returns the row and whether it is new."""
        k = keys.for_workspace(workspace_id)
        reply = await self.ctx.scripts.call(
            "post",
            k.post_keys(k.idem("-")),
            [
                self.ctx.clock.now_ms(),
                amount_micros,
                kind,
                description,
                reference or f"adj_{secrets.token_hex(8)}",
                "available",
                "source",
                "operator",
            ],
        )
        code = reply[0]
        if code == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        if code == Code.INSUFFICIENT:
            balance, reserved = int(reply[1]), int(reply[2])
            raise InsufficientBalance(
                "a debit adjustment may not exceed the available balance",
                balance_usd=usd(balance),
                required_usd=usd(-amount_micros),
                available_usd=usd(balance - reserved),
            )
        self._posted(workspace_id, reply)
        return await self.row(workspace_id, reply[1].decode()), code == Code.OK

    def _posted(self, workspace_id: str, reply: list[Any]) -> None:
        """Wake the workers: a new ledger row means new events, and credits wake limited calls."""
        if reply[0] != Code.OK:
            return
        self.ctx.notifier.events(workspace_id)
        if int(reply[4]):
            self.ctx.notifier.ticks(workspace_id, self.ctx.clock.now_ms())

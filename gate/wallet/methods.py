"""A workspace's payment methods on file: added after a verification charge, one default.

The list lives in the workspace's `methods` hash (method id -> JSON card details); the
default is the workspace record's `payment_method_id`, which top-ups without a method and
auto-recharge charge. No money moves here, so plain Redis commands do (no ledger row).
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from gate.context import Context
from gate.errors import Conflict, NotFound, PaymentDeclined, ValidationFailed
from gate.store import keys
from gate.store.redis_client import text
from gate.store.scripts import Code
from gate.tenancy.audit import SYSTEM, Actor
from gate.tenancy.workspaces import Workspaces
from gate.wallet.payments import PaymentError, PaymentProvider

MAX_METHODS = 20


def methods_key(workspace_id: str) -> str:
    """Hash of the workspace's methods: id -> JSON (carries the workspace hash tag)."""
    return f"{keys.for_workspace(workspace_id).ws}:methods"


class PaymentMethods:
    def __init__(self, ctx: Context, workspaces: Workspaces, payments: PaymentProvider) -> None:
        self.ctx = ctx
        self.workspaces = workspaces
        self.payments = payments

    async def list(self, workspace_id: str) -> dict[str, Any]:
        ws = await self.workspaces.get(workspace_id)
        raw = await self.ctx.client.hgetall(methods_key(workspace_id))
        default = ws.payment_method_id
        data = sorted(
            (orjson.loads(v) | {"default": text(k) == default} for k, v in raw.items()),
            key=lambda m: (m["added_at_ms"], m.pop("_order", 0)),
        )
        return {"data": data, "default_payment_method_id": default}

    async def _audited_set(
        self, workspace_id: str, action: str, actor: Actor, method_id: str, value: str,
        shown: dict[str, Any],
    ) -> None:  # fmt: skip
        """Store or delete a method with its audit entry (card brand and last 4 digits only)."""
        k = keys.for_workspace(workspace_id)
        before, after = ("{}", orjson.dumps(shown).decode()) if value else (
            orjson.dumps(shown).decode(), "{}")  # fmt: skip
        reply = await self.ctx.scripts.call(
            "audited_set",
            [k.ws, methods_key(workspace_id), k.audit],
            [self.ctx.clock.now_ms(), action, *actor.args(), method_id, value, before, after],
        )
        if reply[0] == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")

    async def add(
        self, workspace_id: str, payment_method_id: str, default: bool, actor: Actor = SYSTEM
    ) -> dict[str, Any]:
        """Verify the card with a small refunded charge, then keep it; 402 on a decline."""
        await self.workspaces.get(workspace_id)
        key = methods_key(workspace_id)
        if await self.ctx.client.hlen(key) >= MAX_METHODS:
            raise Conflict(
                f"a workspace keeps at most {MAX_METHODS} payment methods; delete one first"
            )
        try:
            info = await self.payments.verify(workspace_id, payment_method_id)
        except PaymentError as err:
            if err.declined:
                raise PaymentDeclined(
                    f"{err} The verification charge was refused; nothing was stored. "
                    "Use another card."
                ) from err
            raise ValidationFailed(str(err), field="payment_method_id") from err
        record = {
            "id": info.id,
            "brand": info.brand,
            "last4": info.last4,
            "exp_month": info.exp_month,
            "exp_year": info.exp_year,
            "added_at_ms": self.ctx.clock.now_ms(),
            "_order": await self.ctx.client.hlen(key),  # ties of one millisecond
        }
        shown = {"id": info.id, "brand": info.brand, "last4": info.last4}
        await self._audited_set(workspace_id, "payment_method.added", actor, info.id,
                                orjson.dumps(record).decode(), shown)  # fmt: skip
        del record["_order"]
        current = (await self.workspaces.get(workspace_id)).payment_method_id
        if default or current is None or not await self._known(workspace_id, current):
            await self.workspaces.update(
                workspace_id, {"payment_method_id": info.id}, actor, "payment_method.default"
            )
            current = info.id
        return record | {"default": current == info.id}

    async def set_default(
        self, workspace_id: str, payment_method_id: str, actor: Actor = SYSTEM
    ) -> dict[str, Any]:
        record = await self._get(workspace_id, payment_method_id)
        await self.workspaces.update(
            workspace_id, {"payment_method_id": payment_method_id}, actor, "payment_method.default"
        )
        return record | {"default": True}

    async def delete(
        self, workspace_id: str, payment_method_id: str, actor: Actor = SYSTEM
    ) -> None:
        ws = await self.workspaces.get(workspace_id)
        record = await self._get(workspace_id, payment_method_id)
        key = methods_key(workspace_id)
        others = [text(m) for m in await self.ctx.client.hkeys(key) if text(m) != payment_method_id]
        if not others and ws.raw.get("ar_enabled") == "1":
            raise Conflict(
                "this is the last payment method and auto-recharge is on: turn auto-recharge "
                "off (PATCH /v1/wallet/settings) or add another method first"
            )
        shown = {n: record.get(n) for n in ("id", "brand", "last4")}
        await self._audited_set(
            workspace_id, "payment_method.deleted", actor, payment_method_id, "", shown
        )
        if ws.payment_method_id == payment_method_id:
            # The newest remaining method becomes the default, or none is left.
            await self.workspaces.update(
                workspace_id,
                {"payment_method_id": others[-1] if others else None},
                actor,
                "payment_method.default",
            )
        # Gone from Gate either way; a provider that refuses keeps a harmless record.
        with contextlib.suppress(PaymentError):
            await self.payments.detach(workspace_id, payment_method_id)

    async def _known(self, workspace_id: str, payment_method_id: str) -> bool:
        return bool(await self.ctx.client.hexists(methods_key(workspace_id), payment_method_id))

    async def _get(self, workspace_id: str, payment_method_id: str) -> dict[str, Any]:
        raw = await self.ctx.client.hget(methods_key(workspace_id), payment_method_id)
        if raw is None:
            raise NotFound(
                f"no payment method {payment_method_id!r} on file; "
                "GET /v1/wallet/payment_methods lists them"
            )
        record: dict[str, Any] = orjson.loads(raw)
        record.pop("_order", None)
        return record

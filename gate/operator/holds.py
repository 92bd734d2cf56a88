"""The platform's holds on a workspace: suspend with a reason, resume, close for good.

A hold lives in the wallet hash (`hold`, `hold_reason`, `hold_ms`) and is set by
lua/workspace_hold-5.lua with its audit entry in the same step. call_start and charge refuse
while any hold is set (`402 workspace_suspended`, `suspended_by: "platform"`); reads go on.

Closing runs in steps, each safe to repeat, so a close cut short by a crash or refused for a
payment in flight is finished by running it again: hold "closing" (no call, charge, top-up
or automatic recharge starts from here) → refuse while a payment is in flight → end the live
calls → release the numbers → settle the unspent balance → "closed" with the final
statement, every key revoked. The books stay: ledger, audit log and history are kept.

The unspent universal balance leaves the wallet as one `refund` ledger row (reference
`close:<workspace id>`). The payment provider interface offers no refund to the card today,
so the row says `refund_status: owed`: the money is owed back to the card on file, for the
operator (or a refund route) to pay out.
"""

from __future__ import annotations

import orjson

from gate.calls.service import Calls
from gate.context import Context
from gate.errors import InvalidState, NotFound, PaymentInFlight, ValidationFailed
from gate.history import replay
from gate.money import usd
from gate.store import keys
from gate.store.redis_client import text
from gate.store.scripts import Code
from gate.tenancy.audit import Actor
from gate.tenancy.directory import Directory
from gate.wallet.numbers import Numbers
from gate.wallet.service import pending_topups_key, post

LIVE_CALL_POLICIES = ("keep", "end")


def _reason(reason: str) -> str:
    if not reason.strip() or len(reason) > 500:
        raise ValidationFailed(
            "reason must be 1 to 500 characters: say why, it is shown to the tenant",
            field="reason",
        )
    return reason.strip()


class Holds:
    def __init__(self, ctx: Context, calls: Calls, numbers: Numbers) -> None:
        self.ctx = ctx
        self.calls = calls
        self.numbers = numbers
        self.directory = Directory(ctx)

    async def _hold(self, workspace_id: str, verb: str, reason: str, actor: Actor) -> int:
        k = keys.for_workspace(workspace_id)
        reply = await self.ctx.scripts.call(
            "workspace_hold",
            [k.ws, k.wallet, k.audit, k.events, k.keys],
            [self.ctx.clock.now_ms(), verb, reason, *actor.args(), keys.KEYS_REVOKED,
             workspace_id],
        )  # fmt: skip
        code = int(reply[0])
        if code == Code.NO_WORKSPACE:
            raise NotFound("no such workspace; find it with GET /v1/workspaces?q=...")
        if code == Code.INVALID_STATE:
            state = text(reply[1]) or "active"
            hint = {
                "suspend": "resume it first, or leave it as it is",
                "resume": "only a suspended workspace can be resumed",
                "close": "a closed workspace stays closed; its history is kept",
                "closed": "close it first",
            }[verb]
            raise InvalidState(f"the workspace is {state}: {hint}", state=state)
        self.ctx.notifier.events(workspace_id)
        return code

    async def suspend(
        self, workspace_id: str, reason: str, actor: Actor, live_calls: str = "keep"
    ) -> dict[str, object]:
        """Refuse new calls and charges; live calls finish (keep) or are ended now (end)."""
        reason = _reason(reason)
        if live_calls not in LIVE_CALL_POLICIES:
            raise ValidationFailed("live_calls must be 'keep' or 'end'", field="live_calls")
        await self.directory.add_held(workspace_id)  # before the hold: never missing from it
        await self._hold(workspace_id, "suspend", reason, actor)
        ended = []
        if live_calls == "end":
            ended = await self.calls.end_all(workspace_id, "suspended_by_platform")
        return {"id": workspace_id, "state": "suspended", "reason": reason,
                "calls_ended": ended}  # fmt: skip

    async def resume(self, workspace_id: str, actor: Actor) -> dict[str, object]:
        await self._hold(workspace_id, "resume", "", actor)
        await self.directory.drop_held(workspace_id)  # after: never missing while held
        return {"id": workspace_id, "state": "active"}

    async def close(self, workspace_id: str, reason: str, actor: Actor) -> dict[str, object]:
        """Close the workspace for good and return its final statement (see the module)."""
        reason = _reason(reason)
        await self.directory.add_held(workspace_id)
        await self._hold(workspace_id, "close", reason, actor)
        k = keys.for_workspace(workspace_id)
        # A payment already past its hold check finishes, then is settled with the rest.
        pending = await self.ctx.client.hlen(pending_topups_key(workspace_id))
        charging = await self.ctx.client.hget(k.wallet, "ar_state")
        if pending or (charging is not None and text(charging) == "charging"):
            raise PaymentInFlight(
                "a payment of this workspace is in flight; it is closing (nothing new starts) "
                "and the close finishes when you run it again in a minute, once the payment "
                "is settled",
                state="closing",
            )
        ended = await self.calls.end_all(workspace_id, "workspace_closed")
        released = []
        for number in await self.numbers.list(workspace_id):
            await self.numbers.release(workspace_id, str(number["number"]))
            await self.directory.drop_number(workspace_id, str(number["number"]))
            released.append(str(number["number"]))
        refund = await self._settle(workspace_id)
        balance = int(await self.ctx.client.hget(k.wallet, "balance") or 0)
        statement = {
            "workspace_id": workspace_id,
            "reason": reason,
            "closed_at_ms": self.ctx.clock.now_ms(),
            "calls_ended": [str(c["call_id"]) for c in ended],
            "numbers_released": released,
            "refund": refund,
            "final_balance_micros": balance,
            "final_balance_usd": usd(balance),
        }
        code = await self._hold(workspace_id, "closed", orjson.dumps(statement).decode(), actor)
        assert code == Code.OK
        return {"id": workspace_id, "state": "closed", "statement": statement}

    async def _settle(self, workspace_id: str) -> dict[str, object] | None:
        """The unspent universal balance leaves as one refund row, owed to the card."""
        k = keys.for_workspace(workspace_id)
        balance_raw, reserved_raw = await self.ctx.client.hmget(k.wallet, "balance", "reserved")
        balance, reserved = int(balance_raw or 0), int(reserved_raw or 0)
        reference = f"close:{workspace_id}"
        method = await self.ctx.client.hget(k.ws, "payment_method_id")
        amount = balance - reserved
        if amount <= 0:  # nothing left, or settled by an earlier run of this close
            row_id = await self.ctx.client.hget(k.refs, reference)
            row = await replay.row(self.ctx, workspace_id, text(row_id)) if row_id else None
            if row is None:
                return None
            amount, method = -row.amount_micros, row.extra.get("payment_method_id") or None
            return {"amount_micros": amount, "amount_usd": usd(amount), "status": "owed",
                    "payment_method_id": method, "transaction_id": row.id}  # fmt: skip
        posted = await post(
            self.ctx,
            workspace_id,
            now_ms=self.ctx.clock.now_ms(),
            amount_micros=-amount,
            type="refund",
            description="Unspent balance refunded on close: owed to the card on file",
            reference=reference,
            floor="available",
            extra=[("source", "operator"), ("refund_status", "owed"),
                   ("payment_method_id", text(method) if method else "")],
        )  # fmt: skip
        if posted.code not in (Code.OK, Code.REPEAT):
            raise InvalidState(
                f"the balance could not be settled ({Code(posted.code).name}); run the close again",
                state="closing",
            )
        if posted.code == Code.OK:
            self.ctx.notifier.events(workspace_id)
        return {
            "amount_micros": amount,
            "amount_usd": usd(amount),
            "status": "owed",
            "payment_method_id": text(method) if method else None,
            "transaction_id": posted.row_id,
        }

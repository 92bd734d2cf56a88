"""The wallet: balance view, top-ups through a payment provider, adjustments, settings."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gate.context import Context
from gate.delivery.events import iso_ms
from gate.errors import (
    HeldByPlatform,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InsufficientBalance,
    NotFound,
    PaymentDeclined,
    ValidationFailed,
)
from gate.history import ledger, replay
from gate.money import usd
from gate.store import keys
from gate.store.redis_client import text
from gate.store.scripts import Code
from gate.tenancy.audit import SYSTEM
from gate.tenancy.workspaces import Workspace, Workspaces
from gate.wallet.automation import month_of
from gate.wallet.payments import PaymentError, PaymentProvider
from gate.wallet.plans import PLAN_FIELDS, BucketState, minutes_left

AUTO_RECHARGE_CAP_MICROS = 1_000_000_000  # default monthly cap of automatic charges
AUTOMATION_FIELDS = (
    "ar_state", "ar_last", "ar_since", "ar_next", "ar_error", "ar_month", "ar_spent", "lb_state",
)  # fmt: skip
TOPUP_MIN_MICROS = 1_000_000
TOPUP_MAX_MICROS = 1_000_000_000
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
    automation: dict[str, str] = field(default_factory=dict)  # ar_*/lb_* wallet fields
    plan: dict[str, str] = field(default_factory=dict)  # bucket fields (lua/_plan.lua)

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.reserved_micros

    @property
    def etag(self) -> str:
        # `version` moves with every ledger row and settings change, but the call scripts move
        # `reserved` without it: everything the body shows goes into the tag, so a poller
        # never gets 304 for a wallet that changed.
        state = (
            f"{self.workspace.id}:{self.version}:{self.balance_micros}:"
            f"{self.reserved_micros}:{self.live_calls}:{self.status}:"
            f"{sorted(self.automation.items())}:{sorted(self.plan.items())}"
        )
        return f'W/"{hashlib.sha256(state.encode()).hexdigest()[:24]}"'

    def to_json(
        self, per_min_micros: int | None, service_rates: Mapping[str, int | None] | None = None
    ) -> dict[str, Any]:
        """The wallet body. `minutes_left_estimate` is per service ({"voice", "ai_agent"}),
        counting plan allowances, commitments and money at each service's typical rate;
        `minutes_left_at_voice_rate` is the former single number (money / voice rate)."""
        raw = self.workspace.raw
        estimate = None
        if per_min_micros:
            estimate = max(self.available_micros, 0) // per_min_micros
        rates = {"voice": per_min_micros} if service_rates is None else service_rates
        per_service = minutes_left(BucketState(self.plan), self.available_micros, rates)
        return {
            "balance_usd": usd(self.balance_micros),
            "currency": "USD",
            "auto_recharge": {
                "enabled": raw.get("ar_enabled") == "1",
                "threshold_usd": _opt_usd(raw.get("ar_threshold_micros")),
                "topup_usd": _opt_usd(raw.get("ar_topup_micros")),
                **self._auto_recharge_state(),
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
                "state": "triggered" if self.automation.get("lb_state") == "triggered" else "armed",
            },
            "payment_method_id": raw.get("payment_method_id"),
            "live_calls": self.live_calls,
            "minutes_left_estimate": per_service,
            "minutes_left_at_voice_rate": estimate,
            "plan": self.plan.get("plan"),
        }

    def _auto_recharge_state(self) -> dict[str, Any]:
        """State of the automatic charges (lua/_watch.lua): idle, charging or failed."""
        a = self.automation
        cap = int(self.workspace.raw.get("ar_cap_micros") or AUTO_RECHARGE_CAP_MICROS)
        spent = int(a.get("ar_spent") or 0) if a.get("ar_month") == self._month() else 0
        failed = a.get("ar_state") == "failed"
        return {
            "state": a.get("ar_state") or "idle",
            "last_attempt_at": _opt_iso(a.get("ar_last") or a.get("ar_since")),
            "next_attempt_at": _opt_iso(a.get("ar_next")) if failed else None,
            "last_error": a.get("ar_error") if failed else None,
            "monthly_cap_usd": usd(cap),
            "spent_this_month_usd": usd(spent),
        }

    def _month(self) -> str:
        return self.automation.get("_month", "")


def pending_topups_key(workspace_id: str) -> str:
    """Hash of top-ups charged or about to be: key -> JSON (amount, method, idem, digest)."""
    return f"{keys.for_workspace(workspace_id).ws}:pending_topups"


def _opt_iso(value: str | None) -> str | None:
    return None if not value else iso_ms(int(value))


def _opt_usd(value: str | None) -> float | None:
    return None if value is None else usd(int(value))


def body_hash(parts: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


# Typed wrappers of the wallet scripts: keys in header order, replies as frozen dataclasses.


@dataclass(frozen=True, slots=True)
class Claim:
    """Reply of lua/idem_claim-2.lua."""

    code: Code  # OK, REPEAT, NO_WORKSPACE, IDEMPOTENCY_KEY_REUSED or IN_PROGRESS
    state: str | None = None  # REPEAT: "done" or "failed"
    result: str | None = None  # REPEAT: the ledger row id (done) or the error JSON (failed)
    lease_until_ms: int | None = None  # IN_PROGRESS: when the other claim lapses


async def idem_claim(
    ctx: Context, workspace_id: str, idem: str, now_ms: int, digest: str, lease_ms: int, ttl_ms: int
) -> Claim:
    """Claim the Idempotency-Key record `idem` (a key of `workspace_id`) for one request."""
    reply = await ctx.scripts.call(
        "idem_claim",
        [idem, keys.for_workspace(workspace_id).ws],
        [now_ms, digest, lease_ms, ttl_ms],
    )
    code = Code(reply[0])
    if code == Code.REPEAT:
        return Claim(code, text(reply[1]), text(reply[2]))
    if code == Code.IN_PROGRESS:
        return Claim(code, lease_until_ms=int(reply[1]))
    return Claim(code)


async def idem_fail(ctx: Context, idem: str, result: str) -> Code:
    """Record the final error answer of a claimed key; NO_WORKSPACE if it is not pending."""
    reply = await ctx.scripts.call("idem_fail", [idem], [result])
    return Code(reply[0])


@dataclass(frozen=True, slots=True)
class Posted:
    """Reply of lua/post-8.lua."""

    code: Code  # OK, REPEAT, IDEMPOTENCY_KEY_REUSED, NO_WORKSPACE or INSUFFICIENT
    row_id: str | None = None  # OK, REPEAT and IDEMPOTENCY_KEY_REUSED (the earlier row)
    balance_micros: int | None = None  # OK and INSUFFICIENT
    reserved_micros: int | None = None  # OK and INSUFFICIENT
    woken: int = 0  # OK: limited live calls made due now


async def post(
    ctx: Context,
    workspace_id: str,
    *,
    now_ms: int,
    amount_micros: int,
    type: str,
    description: str,
    reference: str,
    floor: str,
    idem: str | None = None,
    extra: Sequence[tuple[str, str | int]] = (),
) -> Posted:
    """Post one balance change with its ledger row, once per reference (lua/post-8.lua).

    floor "available" refuses a debit beyond the available money; "none" lets it through.
    """
    if floor not in ("available", "none"):
        raise ValueError(f"floor must be 'available' or 'none', not {floor!r}")
    k = keys.for_workspace(workspace_id)
    args: list[str | int] = [now_ms, amount_micros, type, description, reference, floor]
    for name, value in extra:
        args += [name, value]
    # With no Idempotency-Key record, KEYS[6] is a name that is never written.
    reply = await ctx.scripts.call("post", k.post_keys(idem or k.idem("-")), args)
    code = Code(reply[0])
    if code == Code.OK:
        return Posted(code, text(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]))
    if code in (Code.REPEAT, Code.IDEMPOTENCY_KEY_REUSED):
        return Posted(code, text(reply[1]))
    if code in (Code.INSUFFICIENT, Code.BALANCE_LIMIT):
        return Posted(code, balance_micros=int(reply[1]), reserved_micros=int(reply[2]))
    return Posted(code)


class Wallet:
    def __init__(self, ctx: Context, workspaces: Workspaces, payments: PaymentProvider) -> None:
        self.ctx = ctx
        self.workspaces = workspaces
        self.payments = payments

    async def view(self, workspace_id: str) -> WalletView:
        k = keys.for_workspace(workspace_id)
        async with self.ctx.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.ws)
            pipe.hmget(k.wallet, "balance", "reserved", "status", "version", "zero_since")
            # The live-calls hash is the truth: the call scripts keep no separate counter.
            pipe.hlen(k.live)
            pipe.hmget(k.wallet, AUTOMATION_FIELDS)
            pipe.hgetall(k.wallet)
            ws_raw, w, live, auto, whole = await pipe.execute()
        if not ws_raw:
            raise NotFound("no such workspace")
        workspace = self.workspaces.parse(ws_raw)
        return WalletView(
            workspace=workspace,
            balance_micros=int(w[0]),
            reserved_micros=int(w[1]),
            status=self._status(workspace, int(w[0]), text(w[2]), w[4]),
            live_calls=int(live),
            version=int(w[3]),
            automation={
                name: text(value)
                for name, value in zip(AUTOMATION_FIELDS, auto, strict=True)
                if value is not None
            }
            | {"_month": month_of(self.ctx.clock.now_ms())[0]},
            plan={
                text(name): text(value)
                for name, value in whole.items()
                if text(name).startswith(PLAN_FIELDS)
            },
        )

    def _status(
        self, workspace: Workspace, balance: int, stored: str, zero_since: bytes | None
    ) -> str:
        """`suspended` as soon as the balance has stayed at or below zero past the grace, as
        call_start will find it, not only once a call start has noticed (docs/design.md §3)."""
        if stored == "suspended" or balance > 0 or zero_since is None:
            return stored
        grace = min(workspace.inbound_grace_s, self.ctx.settings.inbound_grace_max_s)
        late = self.ctx.clock.now_ms() - int(zero_since) > grace * 1000
        return "suspended" if late else stored

    async def payments_check(self, workspace_id: str, payment_method_id: str) -> None:
        """400 unless the provider can charge this payment method."""
        try:
            await self.payments.check_method(workspace_id, payment_method_id)
        except PaymentError as err:
            raise ValidationFailed(str(err), field="payment_method_id") from err

    async def row(self, workspace_id: str, row_id: str) -> ledger.Row:
        found = await replay.row(self.ctx, workspace_id, row_id)  # Redis, else the archive
        if found is None:
            raise NotFound(f"no ledger row {row_id}")
        return found

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
        if amount_micros % 10_000:
            raise ValidationFailed(
                "amount_usd must have at most 2 decimal places: a card is charged in whole cents",
                field="amount_usd",
            )
        await self.payments_check(workspace_id, payment_method_id)
        key = idempotency_key or f"auto-{secrets.token_hex(12)}"
        idem = keys.for_workspace(workspace_id).idem(f"topup:{key}")
        digest = body_hash({"amount_micros": amount_micros, "pm": payment_method_id})
        deadline = asyncio.get_running_loop().time() + _IN_PROGRESS_WAIT_S
        while True:
            claim = await idem_claim(
                self.ctx,
                workspace_id,
                idem,
                self.ctx.clock.now_ms(),
                digest,
                IDEMPOTENCY_LEASE_MS,
                IDEMPOTENCY_TTL_MS,
            )
            if claim.code == Code.OK:
                break
            if claim.code == Code.REPEAT:
                assert claim.result is not None
                if claim.state == "failed":
                    raise PaymentDeclined(orjson.loads(claim.result)["message"])
                return await self.row(workspace_id, claim.result)
            if claim.code == Code.NO_WORKSPACE:
                raise NotFound("no such workspace")
            if claim.code == Code.IDEMPOTENCY_KEY_REUSED:
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

        # Written before the charge: if this process dies between the charge and the credit,
        # the recovery pass (recover_topups) finds the top-up and finishes it.
        pending = orjson.dumps(
            {"amount_micros": amount_micros, "pm": payment_method_id, "idem": idem,
             "digest": digest}
        )  # fmt: skip
        await self.ctx.client.hset(pending_topups_key(workspace_id), key, pending)
        # After the write-ahead record: a close that set its hold before this read finds it
        # here, one that sets it after finds the record and waits (gate/operator/holds.py).
        hold = await self.ctx.client.hmget(
            keys.for_workspace(workspace_id).wallet, "hold", "hold_reason"
        )
        if hold[0] is not None and text(hold[0]) in ("closing", "closed"):
            await self.ctx.client.hdel(pending_topups_key(workspace_id), key)
            held = HeldByPlatform(text(hold[0]), text(hold[1] or b""))
            await idem_fail(self.ctx, idem, orjson.dumps({"message": held.message}).decode())
            raise held
        row = await self._charge_and_credit(
            workspace_id, amount_micros, payment_method_id, key, idem
        )
        await self.workspaces.update(
            workspace_id, {"payment_method_id": payment_method_id}, SYSTEM, "payment_method.default"
        )
        return row

    async def _charge_and_credit(
        self, workspace_id: str, amount_micros: int, payment_method_id: str, key: str, idem: str
    ) -> ledger.Row:
        """Charge once per key and credit once per payment; the idem record is claimed."""
        try:
            payment = await self.payments.charge(
                workspace_id, payment_method_id, amount_micros, key
            )
        except PaymentError as err:
            message = str(err) + " Use another payment method, or try again later."
            await idem_fail(self.ctx, idem, orjson.dumps({"message": message}).decode())
            await self.ctx.client.hdel(pending_topups_key(workspace_id), key)
            raise PaymentDeclined(message) from err
        posted = await post(
            self.ctx,
            workspace_id,
            now_ms=self.ctx.clock.now_ms(),
            amount_micros=amount_micros,
            type="recharge",
            description=f"Wallet top-up ({payment_method_id})",
            reference=payment.id,
            floor="none",
            idem=idem,
            extra=[("source", "card"), ("payment_method_id", payment_method_id)],
        )
        await self.ctx.client.hdel(pending_topups_key(workspace_id), key)
        if posted.code == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        self._posted(workspace_id, posted)
        assert posted.row_id is not None
        return await self.row(workspace_id, posted.row_id)

    async def recover_topups(self, workspace_id: str) -> int:
        """Finish top-ups whose request died between the charge and the credit.

        Each pending top-up whose Idempotency-Key claim has lapsed is claimed again, charged
        with the same key (the provider answers with the same payment) and credited once by
        payment id. Returns how many were credited now.
        """
        pending = pending_topups_key(workspace_id)
        credited = 0
        for raw_key, raw in (await self.ctx.client.hgetall(pending)).items():
            key, record = text(raw_key), orjson.loads(raw)
            claim = await idem_claim(
                self.ctx,
                workspace_id,
                record["idem"],
                self.ctx.clock.now_ms(),
                record["digest"],
                IDEMPOTENCY_LEASE_MS,
                IDEMPOTENCY_TTL_MS,
            )
            if claim.code == Code.IN_PROGRESS:
                continue  # its request is still alive, or another pass is on it
            if claim.code != Code.OK:  # finished (or the workspace is gone)
                await self.ctx.client.hdel(pending, key)
                continue
            try:
                await self._charge_and_credit(
                    workspace_id, record["amount_micros"], record["pm"], key, record["idem"]
                )
                credited += 1
            except PaymentDeclined:
                pass  # recorded on the key: its retry answers the decline
        return credited

    async def adjust(
        self,
        workspace_id: str,
        amount_micros: int,
        kind: str,
        description: str,
        reference: str | None,
    ) -> tuple[ledger.Row, bool]:
        """Post an operator's adjustment or refund; returns the row and whether it is new."""
        posted = await post(
            self.ctx,
            workspace_id,
            now_ms=self.ctx.clock.now_ms(),
            amount_micros=amount_micros,
            type=kind,
            description=description,
            reference=reference or f"adj_{secrets.token_hex(8)}",
            floor="available",
            extra=[("source", "operator")],
        )
        if posted.code == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        if posted.code == Code.BALANCE_LIMIT:
            raise ValidationFailed(
                "a wallet may not be credited past $1,000,000,000 by hand; credit less",
                field="amount_usd",
            )
        if posted.code == Code.IDEMPOTENCY_KEY_REUSED:
            raise IdempotencyKeyReused(
                f"reference {reference!r} was used for another {kind} or amount "
                f"(ledger row {posted.row_id}); use a new reference",
                transaction_id=posted.row_id,
            )
        if posted.code == Code.INSUFFICIENT:
            assert posted.balance_micros is not None and posted.reserved_micros is not None
            raise InsufficientBalance(
                "a debit adjustment may not exceed the available balance",
                balance_usd=usd(posted.balance_micros),
                required_usd=usd(-amount_micros),
                available_usd=usd(posted.balance_micros - posted.reserved_micros),
            )
        self._posted(workspace_id, posted)
        assert posted.row_id is not None
        row = await self.row(workspace_id, posted.row_id)
        if posted.code == Code.REPEAT and (row.type, row.amount_micros) != (kind, amount_micros):
            # post-8 compares while the first row is in Redis; once it is archived, here.
            raise IdempotencyKeyReused(
                f"reference {reference!r} was used for another {kind} or amount "
                f"(ledger row {row.id}); use a new reference",
                transaction_id=row.id,
            )
        return row, posted.code == Code.OK

    def _posted(self, workspace_id: str, posted: Posted) -> None:
        """Wake the workers: a new ledger row means new events, and credits wake limited calls."""
        if posted.code != Code.OK:
            return
        self.ctx.notifier.events(workspace_id)
        if posted.woken:
            self.ctx.notifier.ticks(workspace_id, self.ctx.clock.now_ms())

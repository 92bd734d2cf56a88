"""Number rental (seed 003): a workspace rents phone numbers, charged monthly from its wallet.

The first month is charged when the number is rented (402 when the money is not there); each
later month on the rental's anniversary by the renewal worker, exactly once per number and
month (the month's ledger reference is remembered by the script), crash-safe (workspaces are
leased from a global due index, as the ticker does). A renewal the wallet cannot cover emits
`number.renewal_failed` and is tried again a day later; the number stays rented meanwhile.

A number has one tenant: renting takes a global owner key (`gate:numberws:<number>`) with
SET NX before the rental script runs, as call ownership does (the script's keys carry the
workspace's hash tag, so on Redis Cluster it cannot look across workspaces itself). The claim
holds for CLAIM_S until the script rents the number, then for as long as it is rented; a
refused rental, or a process that died before the script, gives it back (DEL, or the TTL).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gate.calls.rating import NoRate
from gate.calls.service import RateBook
from gate.clock import month_day
from gate.context import Context
from gate.errors import InsufficientBalance, InvalidState, NotFound, NumberTaken, ValidationFailed
from gate.money import usd
from gate.store import keys
from gate.store.due import DueIndex
from gate.store.redis_client import text
from gate.store.scripts import Code
from gate.tasks import Every
from gate.tenancy.directory import Directory

log = logging.getLogger("gate.wallet.numbers")

DAY_MS = 86_400_000
LEASE_MS = 60_000
BATCH = 200
CLAIM_S = 60  # an owner claim whose rental script never ran lapses after this


def add_months(ms: int, months: int) -> int:
    """`ms` plus calendar months, the day clamped to the month's last (Jan 31 + 1 = Feb 28)."""
    t = datetime.fromtimestamp(ms / 1000, UTC)
    d = month_day(t.year, t.month + months, t.day)
    return int(t.replace(year=d.year, month=d.month, day=d.day).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Rented:
    number: str
    rented_ms: int
    period: int
    state: str
    next_ms: int
    price: int

    @classmethod
    def parse(cls, raw: bytes | str) -> Rented:
        d = orjson.loads(raw)
        return cls(d["number"], int(d["rented_ms"]), int(d["period"]), d["state"],
                   int(d["next_ms"]), int(d["price"]))  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "rented_at": self.rented_ms // 1000,
            "months_paid": self.period,
            "state": self.state,
            "next_charge_at": self.next_ms // 1000,
            "price_usd": usd(self.price),
            "price_micros": self.price,
        }


class Numbers:
    def __init__(self, ctx: Context, rates: RateBook) -> None:
        self.ctx = ctx
        self.rates = rates
        self.index = DueIndex(ctx.scripts, keys.RENT_INDEX)

    def _price(self) -> int:
        try:
            price: int = self.rates.card.unit_price("number_rental_month")
        except NoRate as err:
            raise ValidationFailed(
                "the rate card has no [units] number_rental_month price; add it and reload"
            ) from err
        return price

    async def rent(self, workspace_id: str, number: str) -> dict[str, Any]:
        k = keys.for_workspace(workspace_id)
        now = self.ctx.clock.now_ms()
        price = self._price()
        next_ms = add_months(now, 1)
        claimed = await self._claim(workspace_id, number)
        await Directory(self.ctx).add_number(workspace_id, number)  # before: never missing
        reply = await self.ctx.scripts.call("number_rent", k.rent_keys, [now, number, price,
                                                                          next_ms])  # fmt: skip
        code = reply[0]
        if code in (Code.OK, Code.INVALID_STATE):  # rented: the claim holds until DELETE
            await self.ctx.client.persist(keys.number_owner(number))
        elif claimed:
            await self._give_back(workspace_id, number)
        if code == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        if code == Code.INVALID_STATE:
            raise InvalidState(f"this workspace rents {number} already", number=number)
        if code == Code.INSUFFICIENT:
            balance, reserved = int(reply[1]), int(reply[2])
            raise InsufficientBalance(
                "Wallet balance below the first month of this number",
                balance_usd=usd(balance),
                required_usd=usd(price),
                available_usd=usd(balance - reserved),
            )
        await self.index.notify_many({workspace_id: next_ms})
        self.ctx.notifier.events(workspace_id)
        return Rented.parse(reply[1]).to_json()

    async def _claim(self, workspace_id: str, number: str) -> bool:
        """Take the number's global owner key; True if this call took it (409 if another
        workspace holds it)."""
        owner_key = keys.number_owner(number)
        if await self.ctx.client.set(owner_key, workspace_id, nx=True, ex=CLAIM_S):
            return True
        owner = await self.ctx.client.get(owner_key)
        if owner is not None and text(owner) != workspace_id:
            raise NumberTaken(
                f"{number} is rented by another workspace; choose another number",
                number=number,
            )
        return False  # this workspace's own: rented already, or its claim is in flight

    async def _give_back(self, workspace_id: str, number: str) -> None:
        """Release the owner key unless the workspace rents the number (a racing rent of
        its own may have won while this one was refused)."""
        if await self.ctx.client.hexists(keys.for_workspace(workspace_id).numbers, number):
            return
        owner_key = keys.number_owner(number)
        if text(await self.ctx.client.get(owner_key) or b"") == workspace_id:
            await self.ctx.client.delete(owner_key)

    async def list(self, workspace_id: str) -> list[dict[str, Any]]:
        raw = await self.ctx.client.hgetall(keys.for_workspace(workspace_id).numbers)
        return sorted((Rented.parse(v).to_json() for v in raw.values()),
                      key=lambda n: str(n["number"]))  # fmt: skip

    async def release(self, workspace_id: str, number: str) -> dict[str, Any]:
        k = keys.for_workspace(workspace_id)
        reply = await self.ctx.scripts.call("number_release", [k.numbers, k.rent_due], [number])
        if reply[0] == Code.NOT_FOUND:
            raise NotFound(f"this workspace does not rent {number}")
        await self._give_back(workspace_id, number)
        await Directory(self.ctx).drop_number(workspace_id, number)  # after: never missing
        return Rented.parse(reply[1]).to_json() | {"state": "released"}

    async def renew_workspace(self, workspace_id: str, now_ms: int) -> int | None:
        """Charge every due month of one workspace; returns its next due ms (None: none)."""
        k = keys.for_workspace(workspace_id)
        due = await self.ctx.client.zrangebyscore(k.rent_due, "-inf", now_ms, start=0,
                                                  num=BATCH)  # fmt: skip
        if not due:
            head = await self.ctx.client.zrange(k.rent_due, 0, 0, withscores=True)
            return int(head[0][1]) if head else None
        records = await self.ctx.client.hmget(k.numbers, [text(n) for n in due])  # type: ignore[arg-type]
        args: list[str | int] = [now_ms, now_ms + DAY_MS]
        for raw in records:
            if raw is None:
                continue
            rec = Rented.parse(raw)
            period = rec.period + 1
            args += [rec.number, period, add_months(rec.rented_ms, period)]
        reply = await self.ctx.scripts.call("number_renew", k.rent_keys, args)
        charged, failed, next_due = int(reply[1]), int(reply[2]), int(reply[3])
        if charged or failed:
            self.ctx.notifier.events(workspace_id)
            log.info("renewed %d numbers of %s, %d failed", charged, workspace_id, failed)
        return None if next_due < 0 else next_due

    async def run_once(self) -> int:
        """Renew every due number of every due workspace; returns the workspaces handled."""
        now = self.ctx.clock.now_ms()
        handled = 0
        while claimed := await self.index.claim(now, LEASE_MS, 100):
            for workspace_id, _ in claimed:
                k = keys.for_workspace(workspace_id)
                next_ms = await self.renew_workspace(workspace_id, now)
                while next_ms is not None and next_ms <= now:  # a year of catch-up, say
                    next_ms = await self.renew_workspace(workspace_id, now)

                async def head(key: str = k.rent_due) -> int | None:
                    first = await self.ctx.client.zrange(key, 0, 0, withscores=True)
                    return int(first[0][1]) if first else None

                await self.index.settle(workspace_id, next_ms, head)
                handled += 1
        return handled


class Renewals(Every):
    """The renewals' background loop (gate.tasks.Every over Numbers.run_once)."""

    def __init__(self, numbers: Numbers, every_s: float = 60.0) -> None:
        super().__init__(log, "number renewals", numbers.run_once, every_s)
        self.numbers = numbers

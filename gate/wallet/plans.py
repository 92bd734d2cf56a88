"""Plans and credit buckets: assigning a plan, rolling cycles, their view (docs/design.md §8).

The buckets live in the wallet hash (fields documented in lua/_plan.lua) and every script
that bills usage draws from them in one step: the service's allowance, then the commitment
covering the service, then universal credits. This module computes the cycle's calendar for
an assignment (the Lua scripts compute the next ones themselves) and reads the buckets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from gate.calls.rating import PLAN_SERVICES, Plan, RateCard
from gate.clock import month_day
from gate.context import Context
from gate.delivery.events import iso_ms
from gate.errors import NotFound, ValidationFailed
from gate.money import usd
from gate.store import keys
from gate.store.due import DueIndex
from gate.store.redis_client import text
from gate.store.scripts import Code
from gate.tasks import Every
from gate.tenancy.audit import SYSTEM, Actor

log = logging.getLogger("gate.wallet.plans")
DAY_MS = 86_400_000
LEASE_MS = 60_000  # a claimed workspace comes back to the index if its roller dies
# Wallet hash fields of the plan and its buckets (their names start so; lua/_plan.lua).
PLAN_FIELDS = ("plan", "cy", "al:", "alt:", "cm:", "cmt:", "cmr:", "cms:", "pl_")


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def cycle_bounds(now_ms: int, anchor: int) -> tuple[int, int]:
    """The cycle holding `now_ms`: from the last anchor day at or before it (00:00 UTC) to the
    next one; an anchor past a month's end falls on its last day (31 -> Feb 28/29)."""
    today = datetime.fromtimestamp(now_ms / 1000, UTC).date()
    this = month_day(today.year, today.month, anchor)
    if this <= today:
        return _ms(this), _ms(month_day(today.year, today.month + 1, anchor))
    return _ms(month_day(today.year, today.month - 1, anchor)), _ms(this)


def _num(raw: Mapping[str, str], name: str) -> int:
    return int(raw.get(name) or 0)


def _units(seconds_or_units: int, service: str) -> float | int:
    """A bucket amount in the unit the plan is written in (minutes for calls)."""
    if PLAN_SERVICES[service] == "minutes":
        return round(seconds_or_units / 60, 2)
    return seconds_or_units


def _pct(used: int, total: int) -> float:
    return round(100 * used / total, 2) if total else 0.0


@dataclass(frozen=True, slots=True)
class BucketState:
    """The plan fields of a wallet hash, parsed."""

    raw: dict[str, str]

    @property
    def plan(self) -> str | None:
        return self.raw.get("plan") or None

    def services_of(self, commitment: str) -> list[str]:
        return [s for s in PLAN_SERVICES if self.raw.get(f"cms:{s}") == commitment]

    def allowance_left(self, service: str) -> int:
        """Allowance units (seconds for calls) not yet used or held."""
        return _num(self.raw, f"al:{service}")

    def commitment_free(self, service: str) -> int:
        """Micros of the commitment covering `service` that new usage may draw."""
        name = self.raw.get(f"cms:{service}")
        if not name:
            return 0
        return max(_num(self.raw, f"cm:{name}") - _num(self.raw, f"cmr:{name}"), 0)

    def to_json(self, available_micros: int, balance_micros: int) -> dict[str, Any]:
        raw = self.raw
        buckets: list[dict[str, Any]] = []
        for service in filter(None, raw.get("pl_al", "").split(",")):
            total, left = _num(raw, f"alt:{service}"), _num(raw, f"al:{service}")
            buckets.append({
                "type": "plan_allowance",
                "name": service,
                "services": [service],
                "unit": PLAN_SERVICES[service],
                "committed": _units(total, service),
                "spent": _units(total - left, service),
                "available": _units(left, service),
                "used_pct": _pct(total - left, total),
                "committed_units": total,
                "available_units": left,
                "units_are": "seconds" if PLAN_SERVICES[service] == "minutes" else
                PLAN_SERVICES[service],
            })  # fmt: skip
        for name in filter(None, raw.get("pl_cm", "").split(",")):
            total, left = _num(raw, f"cmt:{name}"), _num(raw, f"cm:{name}")
            held = _num(raw, f"cmr:{name}")
            free = max(left - held, 0)
            buckets.append({
                "type": "commitment",
                "name": name,
                "services": self.services_of(name),
                "unit": "usd",
                "committed": usd(total),
                "spent": usd(total - left),
                "available": usd(free),
                "used_pct": _pct(total - free, total),
                "committed_micros": total,
                "spent_micros": total - left,
                "reserved_micros": held,
                "available_micros": free,
            })  # fmt: skip
        buckets.append({
            "type": "universal",
            "name": "universal",
            "services": [*PLAN_SERVICES, "number_rental"],
            "unit": "usd",
            "committed": None,
            "spent": None,
            "available": usd(available_micros),
            "used_pct": None,
            "available_micros": available_micros,
            "balance_micros": balance_micros,
            "expires": None,
        })  # fmt: skip
        start, end = raw.get("cy"), raw.get("cy_end")
        return {
            "plan": self.plan,
            "cycle_anchor": _num(raw, "cy_anchor") or None,
            "cycle_start": iso_ms(int(start)) if start else None,
            "cycle_end": iso_ms(int(end)) if end else None,
            "order": ["plan_allowance", "commitment", "universal"],
            "buckets": buckets,
        }


def minutes_left(
    state: BucketState, available_micros: int, rates: Mapping[str, int | None]
) -> dict[str, int | None]:
    """Minutes a new call of each service could last: its allowance, then the commitment
    covering it and universal money at the service's typical rate (None: no such rate)."""
    out: dict[str, int | None] = {}
    for service, per_min in rates.items():
        money = state.commitment_free(service) + max(available_micros, 0)
        allowance_min = state.allowance_left(service) // 60
        if not per_min:
            out[service] = allowance_min or None
            continue
        out[service] = allowance_min + money // per_min
    return out


class Plans:
    """Assigns plans and reads buckets; the card (and so the plans) can be reloaded."""

    def __init__(self, ctx: Context, card: Callable[[], RateCard]) -> None:
        self.ctx = ctx
        self.card = card
        self.index = DueIndex(ctx.scripts, keys.CYCLE_INDEX)

    def resolve(self, name: str) -> Plan:
        plans = self.card().plans
        try:
            return plans[name]
        except KeyError:
            raise ValidationFailed(
                f"unknown plan {name!r}; the rate card has: {', '.join(sorted(plans)) or 'none'}",
                field="plan",
            ) from None

    def default_plan(self) -> str | None:
        """The plan new workspaces get: GATE_DEFAULT_PLAN, else the card's default_plan."""
        setting = self.ctx.settings.default_plan
        if setting in ("none", ""):
            return None
        return setting or self.card().default_plan

    async def assign(
        self, workspace_id: str, name: str | None, anchor: int | None, actor: Actor = SYSTEM
    ) -> None:
        """Give the workspace a plan (None: take it away) with a cycle starting now; the
        audit log says who, in the same step."""
        now = self.ctx.clock.now_ms()
        if anchor is None:
            anchor = datetime.fromtimestamp(now / 1000, UTC).day
        if not 1 <= anchor <= 31:
            raise ValidationFailed("cycle_anchor must be a day of the month, 1 to 31",
                                   field="cycle_anchor")  # fmt: skip
        args: list[str | int] = [now, "", anchor, 0, 0, 0, *actor.args()]
        if name is not None:
            plan = self.resolve(name)
            start, end = cycle_bounds(now, anchor)
            args = [now, plan.name, anchor, start, end, len(plan.allowances), *actor.args()]
            for service, units in plan.allowances.items():
                args += [service, units]
            for c in plan.commitments:
                args += [c.name, c.micros, ",".join(c.services)]
        k = keys.for_workspace(workspace_id)
        reply = await self.ctx.scripts.call("plan_set", [*k.call_keys, k.audit], args)
        if Code(reply[0]) == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        self.ctx.notifier.events(workspace_id)
        if name is None:
            await self.ctx.client.zrem(keys.CYCLE_INDEX, workspace_id)
        else:
            await self.ctx.client.zadd(keys.CYCLE_INDEX, {workspace_id: int(args[4])})

    async def roll(self, workspace_id: str) -> tuple[bool, BucketState]:
        """Roll the cycle if it ended; the wallet's bucket fields after it."""
        k = keys.for_workspace(workspace_id)
        reply = await self.ctx.scripts.call("plan_roll", k.call_keys, [self.ctx.clock.now_ms()])
        if Code(reply[0]) == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        flat = [text(v) for v in reply[2]]
        raw = dict(zip(flat[0::2], flat[1::2], strict=True))
        if reply[1]:
            self.ctx.notifier.events(workspace_id)
        return bool(reply[1]), BucketState(raw)

    async def buckets(self, workspace_id: str) -> dict[str, Any]:
        _, state = await self.roll(workspace_id)
        balance, reserved = _num(state.raw, "balance"), _num(state.raw, "reserved")
        return state.to_json(balance - reserved, balance)

    async def run_once(self) -> int:
        """Roll the cycle of every workspace whose cycle ended, so an idle wallet's expiry row
        appears at its boundary too; returns the workspaces handled."""
        now = self.ctx.clock.now_ms()
        handled = 0
        while claimed := await self.index.claim(now, LEASE_MS, 100):
            for workspace_id, _ in claimed:
                try:
                    _, state = await self.roll(workspace_id)
                except NotFound:
                    state = BucketState({})
                end = state.raw.get("cy_end")
                wallet = keys.for_workspace(workspace_id).wallet

                async def head(key: str = wallet) -> int | None:
                    found = await self.ctx.client.hget(key, "cy_end")
                    return int(found) if found else None

                await self.index.settle(workspace_id, int(end) if end else None, head)
                handled += 1
        return handled


class CycleRoller(Every):
    """The cycle worker's background loop (gate.tasks.Every over Plans.run_once)."""

    def __init__(self, plans: Plans, every_s: float = 60.0) -> None:
        super().__init__(log, "plan cycles", plans.run_once, every_s)

"""Spending alerts from the ledger history: monthly budget thresholds and daily spikes.

A workspace may set a monthly budget with thresholds (50/80/100 % by default): each fires
once per calendar month (UTC) as a `wallet.spend_threshold` event when the month's usage
reaches it. A spike alert (`wallet.spend_spike`) fires once per day when the day's usage
exceeds `spike_factor` times the trailing 7-day daily average, naming the service that grew
most (seed 001's banner). Usage is the debits of usage rows (calls, AI agent, messaging,
fax, numbers), read from the archive; the archiver checks a workspace after each pass that
archived new rows, so alerts follow spending within a pass. No mailer exists yet: the events
go out as webhooks and on the SSE stream like every other event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, select

from gate.context import Context
from gate.history.schema import ledger_rows
from gate.money import usd
from gate.store import keys
from gate.store.redis_client import text
from gate.store.scripts import Code

USAGE_TYPES = ("call", "ai_agent", "sms", "mms", "fax", "chat", "number_rental")
DEFAULT_THRESHOLDS = (50, 80, 100)
_DAY_MS = 86_400_000
_C = ledger_rows.c


@dataclass(frozen=True, slots=True)
class AlertSettings:
    budget_micros: int | None
    thresholds: tuple[int, ...]
    spike_factor: int | None

    @classmethod
    def from_record(cls, raw: dict[str, str]) -> AlertSettings:
        budget = raw.get("sa_budget_micros")
        thresholds = raw.get("sa_thresholds")
        factor = raw.get("sa_spike_factor")
        return cls(
            budget_micros=int(budget) if budget else None,
            thresholds=tuple(int(t) for t in thresholds.split(",")) if thresholds else (),
            spike_factor=int(factor) if factor else None,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "monthly_budget_micros": self.budget_micros,
            "monthly_budget_usd": None if self.budget_micros is None else usd(self.budget_micros),
            "thresholds_pct": list(self.thresholds),
            "spike_factor": self.spike_factor,
        }


def alerts_key(workspace_id: str) -> str:
    return f"{keys.for_workspace(workspace_id).ws}:alerts"


async def _spend_by_type(
    ctx: Context, workspace_id: str, start_ms: int, end_ms: int
) -> dict[str, int]:
    assert ctx.archive is not None
    q = (
        select(_C.type, func.sum(-_C.amount_micros))
        .where(
            and_(
                _C.workspace_id == workspace_id,
                _C.type.in_(USAGE_TYPES),
                _C.amount_micros < 0,
                _C.at_ms >= start_ms,
                _C.at_ms < end_ms,
            )
        )
        .group_by(_C.type)
    )
    async with ctx.archive.engine.connect() as conn:
        return {row[0]: int(row[1]) for row in await conn.execute(q)}


async def _history_days(ctx: Context, workspace_id: str, today_ms: int) -> int:
    """Days (at most 7) between the first usage row of the trailing week and today."""
    assert ctx.archive is not None
    q = select(func.min(_C.at_ms)).where(
        and_(
            _C.workspace_id == workspace_id,
            _C.type.in_(USAGE_TYPES),
            _C.at_ms >= today_ms - 7 * _DAY_MS,
            _C.at_ms < today_ms,
        )
    )
    async with ctx.archive.engine.connect() as conn:
        first = (await conn.execute(q)).scalar()
    if first is None:
        return 0
    return min(7, -(-(today_ms - int(first)) // _DAY_MS))


async def _raise(ctx: Context, workspace_id: str, marker: str, etype: str, data: list[str]) -> bool:
    k = keys.for_workspace(workspace_id)
    reply = await ctx.scripts.call(
        "spend_alert",
        [alerts_key(workspace_id), k.wallet, k.events],
        [ctx.clock.now_ms(), marker, etype, *data],
    )
    if reply[0] == Code.OK:
        ctx.notifier.events(workspace_id)
        return True
    return False


async def check(ctx: Context, workspace_id: str) -> list[str]:
    """Raise the alerts this workspace's spending calls for now; returns the markers raised."""
    if ctx.archive is None:
        return []
    raw = await ctx.client.hgetall(keys.for_workspace(workspace_id).ws)
    settings = AlertSettings.from_record({text(k): text(v) for k, v in raw.items()})
    if settings.budget_micros is None and settings.spike_factor is None:
        return []
    now = datetime.fromtimestamp(ctx.clock.now_ms() / 1000, UTC)
    raised: list[str] = []
    if settings.budget_micros:
        month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        next_month = (month_start + timedelta(days=32)).replace(day=1)
        spent = sum(
            (
                await _spend_by_type(
                    ctx,
                    workspace_id,
                    int(month_start.timestamp() * 1000),
                    int(next_month.timestamp() * 1000),
                )
            ).values()
        )
        month = month_start.strftime("%Y-%m")
        for pct in settings.thresholds:
            if spent * 100 >= settings.budget_micros * pct:
                marker = f"spend:{month}:{pct}"
                data = [
                    *("month", month, "threshold_pct", str(pct)),
                    *("budget_micros", str(settings.budget_micros), "spent_micros", str(spent)),
                ]
                if await _raise(ctx, workspace_id, marker, "wallet.spend_threshold", data):
                    raised.append(marker)
    if settings.spike_factor:
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        today_ms = int(day_start.timestamp() * 1000)
        today = await _spend_by_type(ctx, workspace_id, today_ms, today_ms + _DAY_MS)
        week = await _spend_by_type(ctx, workspace_id, today_ms - 7 * _DAY_MS, today_ms)
        spent_today, week_total = sum(today.values()), sum(week.values())
        # The average is over the days with history: a workspace two days old is compared
        # with its one day before, not with a week mostly empty. No history, no spike.
        days = await _history_days(ctx, workspace_id, today_ms)
        if days and week_total > 0 and spent_today * days > settings.spike_factor * week_total:
            service = max(today, key=lambda t: today[t] * days - week.get(t, 0))
            day = day_start.strftime("%Y-%m-%d")
            data = ["day", day, "spent_micros", str(spent_today),
                    "trailing_avg_micros", str(week_total // days),
                    "factor", str(settings.spike_factor), "service", service]  # fmt: skip
            if await _raise(ctx, workspace_id, f"spike:{day}", "wallet.spend_spike", data):
                raised.append(f"spike:{day}")
    return raised

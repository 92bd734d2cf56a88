"""The monthly usage summary (seed 002): spend and counts per service, top users and groups.

Read from the ledger rows of the month, so it is exact to the micro against them: spend per
service is the sum of its rows' money (the universal debit plus what a plan commitment paid,
`commitment_micros`), and the totals add up to the month's usage rows. `plan_usage` sums what
the rows drew from each plan bucket (allowance units, commitment micros) and what expired.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis, RedisCluster

from gate.history import ledger
from gate.money import usd, usd_str

if TYPE_CHECKING:
    from gate.history.archive import Archive

# ledger row type -> the service it is usage of
SERVICE_OF = {
    "call": "voice",
    "ai_agent": "ai_agent",
    "sms": "sms",
    "mms": "mms",
    "fax": "fax",
    "chat": "chat",
    "number_rental": "numbers",
}
COUNTS = ("billable_s", "segments", "pages", "messages")
TOP = 10


@dataclass
class Tally:
    spend_micros: int = 0
    count: int = 0
    units: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))

    def add(self, row: ledger.Row) -> None:
        self.spend_micros += int(row.extra.get("commitment_micros", "0")) - row.amount_micros
        if row.extra.get("flag") != "late_end":  # the rest of a call already counted
            self.count += 1
        for name in COUNTS:
            raw = row.extra.get(name)
            if raw is not None and raw.lstrip("-").isdigit():
                self.units[name] += int(raw)

    def to_json(self) -> dict[str, Any]:
        return {
            "spend_usd": usd(self.spend_micros),
            "spend_micros": self.spend_micros,
            "count": self.count,
            "minutes": round(self.units["billable_s"] / 60, 2),
            **{name: value for name, value in self.units.items()},
        }


async def monthly(
    client: Redis | RedisCluster,
    workspace_id: str,
    month: str,
    start_ms: int,
    end_ms: int,
    archive: Archive | None = None,
) -> dict[str, Any]:
    """The summary of one calendar month (UTC) of one workspace."""
    services: dict[str, Tally] = defaultdict(Tally)
    users: dict[str, Tally] = defaultdict(Tally)
    groups: dict[str, Tally] = defaultdict(Tally)
    credits = 0
    plan_usage: dict[str, dict[str, Any]] = {}
    usage = frozenset(SERVICE_OF)
    month_rows = ledger.Filters(start_ms=start_ms, end_ms=end_ms)
    async for row in ledger.scan(client, workspace_id, month_rows, archive=archive):
        _plan_use(plan_usage, row)
        if row.type not in usage:
            credits += row.amount_micros
            continue
        services[SERVICE_OF[row.type]].add(row)
        if user := row.extra.get("user"):
            users[user].add(row)
        if group := row.extra.get("group"):
            groups[group].add(row)
    total = sum(t.spend_micros for t in services.values())

    def top(tallies: dict[str, Tally], name: str) -> list[dict[str, Any]]:
        ranked = sorted(tallies.items(), key=lambda kv: (-kv[1].spend_micros, kv[0]))[:TOP]
        return [{name: key, "spend_usd": usd(t.spend_micros), "spend_micros": t.spend_micros,
                 "count": t.count} for key, t in ranked]  # fmt: skip

    return {
        "month": month,
        "currency": "USD",
        "total_spend_usd": usd(total),
        "total_spend_micros": total,
        "credits_usd": usd(credits),
        "credits_micros": credits,
        "services": [
            {"service": name, **services[name].to_json()}
            for name in dict.fromkeys(SERVICE_OF.values())
            if name in services
        ],
        "top_users": top(users, "user"),
        "top_groups": top(groups, "group"),
        "plan_usage": [plan_usage[name] for name in sorted(plan_usage)],
    }


def _plan_use(out: dict[str, dict[str, Any]], row: ledger.Row) -> None:
    """Add one row's draw on the plan buckets (and a cycle row's expiries) to `out`."""
    x = row.extra

    def bucket(name: str, kind: str) -> dict[str, Any]:
        return out.setdefault(name, {"bucket": name, "type": kind, "used_units": 0,
                                     "used_micros": 0, "expired_units": 0,
                                     "expired_micros": 0})  # fmt: skip

    if row.type == "plan_cycle":
        for field_name, value in x.items():
            if field_name.startswith("expired_allowance_"):
                name = "plan_allowance:" + field_name.removeprefix("expired_allowance_")
                bucket(name, "plan_allowance")["expired_units"] += int(value)
            elif field_name.startswith("expired_commitment_"):
                cm = field_name.removeprefix("expired_commitment_").removesuffix("_micros")
                bucket("commitment:" + cm, "commitment")["expired_micros"] += int(value)
        return
    service = {"call": "voice"}.get(row.type, row.type)
    units = int(x.get("allowance_units", "0")) + int(x.get("allowance_prior_units", "0"))
    if units:
        bucket("plan_allowance:" + service, "plan_allowance")["used_units"] += units
    if x.get("commitment"):
        used = int(x.get("commitment_micros", "0"))
        bucket("commitment:" + x["commitment"], "commitment")["used_micros"] += used


def to_csv(summary: dict[str, Any]) -> str:
    """The per-service table of a summary as CSV, with a total line."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["month", "service", "count", "minutes", "segments", "pages", "messages",
                     "spend_usd"])  # fmt: skip
    for s in summary["services"]:
        writer.writerow([summary["month"], s["service"], s["count"], s["minutes"], s["segments"],
                         s["pages"], s["messages"], usd_str(s["spend_micros"])])  # fmt: skip
    writer.writerow([summary["month"], "total", "", "", "", "", "",
                     usd_str(summary["total_spend_micros"])])  # fmt: skip
    return buf.getvalue()

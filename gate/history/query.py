"""The history's query string: which parameters exist, and the Filters they make.

Shared by `GET /v1/wallet/transactions`, `GET /v1/usage/export` and `gate export`, so the
API and the CLI accept and refuse exactly the same things.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol

from gate.errors import ValidationFailed
from gate.history.ledger import Filters, types_for
from gate.money import parse_usd


class Query(Protocol):
    """A query string: aiohttp's request.query, or a multidict the CLI builds."""

    def get(self, key: str, /) -> str | None: ...
    def getall(self, key: str, /) -> list[str]: ...
    def __iter__(self) -> Iterator[str]: ...


_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# The extended ISO 8601 forms a person or a program writes; Python would also take week dates
# (2027-W05) and basic forms (20270201), which a history filter should not guess at.
_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$"
)


def _date_ms(q: Query, name: str, *, end: bool = False) -> int | None:
    """Milliseconds of an ISO 8601 date or time (UTC unless it says otherwise).

    A bare date as the end of a range means the whole of that day: to=2026-11-05 keeps
    the rows of November 5th, as a person picking dates in a history filter expects.
    """
    raw = q.get(name)
    if not raw:
        return None
    try:
        if not _DATE_TIME.match(raw):
            raise ValueError(raw)
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed(
            f"{name} must be an ISO 8601 date or time, like 2026-11-01", field=name
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        if end and _DATE_ONLY.match(raw):
            parsed += timedelta(days=1)
        # Stream ids are unsigned: a date before 1970 is simply "from the start".
        return max(int(parsed.timestamp() * 1000), 0)
    except (OverflowError, ValueError):
        raise ValidationFailed(f"{name} is out of range", field=name) from None


def month_range(raw: str) -> tuple[int, int]:
    try:
        start = datetime.strptime(raw, "%Y-%m").replace(tzinfo=UTC)
        end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
        if start.year < 1970:
            raise ValueError(raw)
    except ValueError:
        raise ValidationFailed(
            "month must look like 2026-11 (from 1970-01 to 9999-11)", field="month"
        ) from None
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


# Query parameters of the history routes; anything else is refused, so that a misspelt
# filter (`?ofice=x`) cannot silently export everything.
FILTER_PARAMS = (
    "type",
    "service",
    "user",
    "group",
    "month",
    "from",
    "to",
    "min_amount_usd",
    "max_amount_usd",
    "source",
    "wallet_source",
    "direction",
    "number",
    "contact",
    "workspace_id",
)
PAGE_PARAMS = ("limit", "cursor")


def check_params(q: Query, allowed: tuple[str, ...]) -> None:
    """400 naming every unknown or repeated query parameter."""
    unknown = sorted({name for name in q if name not in allowed})
    if unknown:
        raise ValidationFailed(
            f"unknown query parameter(s): {', '.join(unknown)}; "
            f"the known ones are {', '.join(allowed)}",
            field=unknown[0],
        )
    repeated = sorted({name for name in q if len(q.getall(name)) > 1})
    if repeated:
        raise ValidationFailed(
            f"query parameter(s) given more than once: {', '.join(repeated)}; send each once "
            "(several types go comma-separated in one: type=call,sms)",
            field=repeated[0],
        )


def filters(q: Query) -> Filters:
    """The history filters of a query string (the list, the CSV export, `gate export`)."""
    start, end = _date_ms(q, "from"), _date_ms(q, "to", end=True)
    if month := q.get("month"):
        if start is not None or end is not None:
            raise ValidationFailed("send either month or from/to, not both", field="month")
        start, end = month_range(month)
    if start is not None and end is not None and start >= end:
        raise ValidationFailed("from must be before to", field="from")
    amount_min = q.get("min_amount_usd") or None
    amount_max = q.get("max_amount_usd") or None
    low = None if amount_min is None else parse_usd(amount_min, "min_amount_usd")
    high = None if amount_max is None else parse_usd(amount_max, "max_amount_usd")
    if low is not None and high is not None and low > high:
        raise ValidationFailed(
            "min_amount_usd must not be above max_amount_usd", field="min_amount_usd"
        )
    return Filters(
        types=types_for(q.get("type"), q.get("service")),
        user=q.get("user"),
        group=q.get("group"),
        source=_source(q),
        direction=_direction(q),
        number=q.get("number") or None,
        contact=q.get("contact") or None,
        start_ms=start,
        end_ms=end,
        min_micros=low,
        max_micros=high,
    )


def _source(q: Query) -> str | None:
    """`wallet_source` (docs/design.md §7's name) or `source` (the older one): the credit bucket."""
    if q.get("source") and q.get("wallet_source"):
        raise ValidationFailed("send wallet_source or source, not both", field="wallet_source")
    return q.get("wallet_source") or q.get("source") or None


def _direction(q: Query) -> str | None:
    value = q.get("direction") or None
    if value is not None and value not in ("inbound", "outbound"):
        raise ValidationFailed("direction must be inbound or outbound", field="direction")
    return value

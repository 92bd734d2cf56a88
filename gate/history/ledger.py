"""Reading the ledger: rows, filters, cursor pages and the full CSV export.

Rows live in a per-workspace Redis stream whose entry id is `<at ms>-<n>`, so the id is the
cursor, rows come newest first with XREVRANGE, and a date range is an id range.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis, RedisCluster

from gate.errors import InvalidCursor, ValidationFailed
from gate.money import usd, usd_str
from gate.store import keys
from gate.store.redis_client import entries, text

if TYPE_CHECKING:
    from gate.history.archive import Archive

ROW_TYPES = (
    "recharge",
    "call",
    "ai_agent",
    "sms",
    "mms",
    "fax",
    "chat",
    "number_rental",
    "adjustment",
    "refund",
    "dispute",  # a card payment disputed (debit), or the dispute won (credit)
    "plan_cycle",  # amount 0: a plan's cycle started; what expired unused (gate/wallet/plans.py)
)
SERVICES = {  # service filter -> row types (the seeds' Usage History services)
    "calling": {"call"},
    "voice": {"call"},
    "ai_agent": {"ai_agent"},
    "messaging": {"sms", "mms", "chat"},
    "fax": {"fax"},
    "numbers": {"number_rental"},
    "credits": {"recharge", "adjustment", "refund", "dispute"},
}
_STREAM_ID = re.compile(r"^\d{1,16}-\d{1,16}$")
_INT_TEXT = re.compile(r"^-?\d{1,18}$")
_CORE = {"type", "desc", "amount", "balance", "ref"}
_INT_EXTRAS = {
    "duration_s",
    "billable_s",
    "segments",
    "pages",
    "messages",
    "characters",
    "quantity",
    "rate_micros",
}
_BATCH = 500
_ARCHIVE_BATCH = 2000
# Rows a person's usage made (what the seeds call usage records); credits and plan rows are not.
USAGE_TYPES = frozenset({"call", "ai_agent", "sms", "mms", "fax", "chat", "number_rental"})
_UNIT = {"sms": "segment", "mms": "message", "chat": "message", "fax": "page"}
_ALLOWANCE = re.compile(r"^plan_allowance:([\w-]+)=(\d+)([a-z_]*)$")


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    at_ms: int
    type: str
    description: str
    amount_micros: int
    balance_after_micros: int
    reference: str
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, entry_id: bytes | str, raw: dict[bytes, bytes]) -> Row:
        rid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=rid,
            at_ms=int(rid.split("-", 1)[0]),
            type=f["type"],
            description=f["desc"],
            amount_micros=int(f["amount"]),
            balance_after_micros=int(f["balance"]),
            reference=f["ref"],
            extra={k: v for k, v in f.items() if k not in _CORE},
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "at": iso_ms(self.at_ms),
            "type": self.type,
            "description": self.description,
            "amount_usd": usd(self.amount_micros),
            "amount_micros": self.amount_micros,
            "balance_after_usd": usd(self.balance_after_micros),
            "balance_after_micros": self.balance_after_micros,
            "reference": self.reference,
        }
        cost = self.cost_micros()
        if cost is not None:
            body["cost_usd"], body["cost_micros"] = usd(cost), cost
            body["paid_from"] = self.paid_from()
        for name, value in self.extra.items():
            if _is_int_extra(name) and _INT_TEXT.match(value):
                body[name] = int(value)
                if name == "rate_micros":
                    body["rate_per_min_usd"] = usd(int(value))
                elif name.endswith("_micros"):
                    body[name[: -len("_micros")] + "_usd"] = usd(int(value))
            else:
                body[name] = value
        return body

    def cost_micros(self) -> int | None:
        """What a usage row cost in money, whichever credits paid it (seed 001's Cost).

        Commitment dollars do not move the wallet's balance, so a call a commitment paid has
        amount 0 and a cost: the rows that carry `cost_micros` say so; the others cost what
        they took from the wallet. Time a plan allowance covered costs nothing here: it shows
        in `paid_from` as allowance units.
        """
        if self.type not in USAGE_TYPES:
            return None
        given = self.extra.get("cost_micros", "")
        return int(given) if _INT_TEXT.match(given) else max(-self.amount_micros, 0)

    def paid_from(self) -> list[dict[str, Any]]:
        """Which credits paid a usage row: plan allowance units, commitment and universal
        dollars, in the order Gate drew them (seed 001's Wallet Source)."""
        detail = self.extra.get("wallet_source")
        if not detail:
            cost = self.cost_micros() or 0
            return [{"source": "universal", "usd": usd(cost), "micros": cost}]
        parts: list[dict[str, Any]] = []
        for item in detail.split(","):
            name, _, value = item.partition("=")
            if m := _ALLOWANCE.match(item):
                parts.append({"source": "plan_allowance", "service": m[1], "units": int(m[2]),
                              "unit": m[3] or _UNIT.get(m[1], "unit")})  # fmt: skip
            elif _INT_TEXT.match(value):
                kind, _, bucket = name.partition(":")
                part: dict[str, Any] = {"source": kind, "usd": usd(int(value)),
                                        "micros": int(value)}  # fmt: skip
                if bucket:
                    part["name"] = bucket
                parts.append(part)
        return parts


def _is_int_extra(name: str) -> bool:
    """Counts, seconds and money are JSON integers (the API promises `*_micros` integers)."""
    return (
        name in _INT_EXTRAS
        or name.endswith(("_micros", "_s", "_units"))
        or name.startswith(("allowance_", "expired_allowance_", "carried_allowance_"))
    )


@dataclass(frozen=True, slots=True)
class Filters:
    """What a history query keeps; every field is optional."""

    types: frozenset[str] = frozenset()
    user: str | None = None
    group: str | None = None
    source: str | None = None
    direction: str | None = None
    number: str | None = None  # the from or the to number
    contact: str | None = None  # the user, the group or the contact (seed 001's one box)
    start_ms: int | None = None  # inclusive
    end_ms: int | None = None  # exclusive
    min_micros: int | None = None  # on the absolute amount
    max_micros: int | None = None

    def keep(self, row: Row) -> bool:
        if self.types and row.type not in self.types:
            return False
        if self.user is not None and row.extra.get("user") != self.user:
            return False
        if self.group is not None and row.extra.get("group") != self.group:
            return False
        if self.source is not None and self.source not in row.extra.get("source", "").split("+"):
            return False
        x = row.extra
        if self.direction is not None and x.get("direction") != self.direction:
            return False
        if self.number is not None and self.number not in (x.get("from"), x.get("to")):
            return False
        if self.contact is not None and self.contact not in (
            x.get("user"),
            x.get("group"),
            x.get("contact"),
        ):
            return False
        size = abs(row.amount_micros)
        if self.min_micros is not None and size < self.min_micros:
            return False
        return not (self.max_micros is not None and size > self.max_micros)


def is_row_id(text: str) -> bool:
    return bool(_STREAM_ID.match(text))


def check_cursor(cursor: str) -> str:
    if not _STREAM_ID.match(cursor):
        raise InvalidCursor("cursor is not one this API gave out; start again without it")
    return cursor


def types_for(type_param: str | None, service: str | None) -> frozenset[str]:
    types: set[str] = set()
    if type_param:
        for t in type_param.split(","):
            if t not in ROW_TYPES:
                raise ValidationFailed(f"type must be among {', '.join(ROW_TYPES)}", field="type")
            types.add(t)
    if service:
        if service not in SERVICES:
            raise ValidationFailed(f"service must be one of {', '.join(SERVICES)}", field="service")
        types = types & SERVICES[service] if types else set(SERVICES[service])
        if not types:
            types = {"-"}  # type and service exclude each other: nothing matches
    return frozenset(types)


async def scan(
    client: Redis | RedisCluster,
    workspace_id: str,
    filters: Filters,
    cursor: str | None = None,
    archive: Archive | None = None,
    batch: int = _ARCHIVE_BATCH,
) -> AsyncIterator[Row]:
    """Every matching row, newest first, starting after `cursor`: Redis, then the archive.

    `batch` is how many rows one SQL query asks for: a page asks for what it shows, so a
    selective filter stops at the first matches instead of searching for thousands.

    The seam has no gap and no double row: Redis is read down to its oldest row first; the
    archive then gives only rows older than the oldest row Redis showed. A row leaves Redis
    only after it is committed to the archive, and new rows are always newer, so whatever
    Redis no longer had when it was read is in the archive.
    """
    oldest_seen: str | None = None
    # Redis is read only above the archive's cursor: rows at or below it are committed to
    # SQL, whose indexes serve the filters far better than a walk through the stream.
    archived = await archive.cursor(workspace_id) if archive is not None else None
    above = archived.row_id if archived is not None else None
    async for row, seen in _scan_redis(client, workspace_id, filters, cursor, above):
        oldest_seen = seen
        if row is not None:
            yield row
    if archive is None:
        return
    before = oldest_seen or cursor
    while True:
        rows = await archive.rows_before(workspace_id, filters, before, batch)
        for row in rows:
            yield row
        if len(rows) < batch:
            return
        before = rows[-1].id


async def _scan_redis(
    client: Redis | RedisCluster,
    workspace_id: str,
    filters: Filters,
    cursor: str | None,
    above: str | None = None,
) -> AsyncIterator[tuple[Row | None, str]]:
    """(matching row or None, id of the row read) for every Redis row newer than `above`,
    newest first."""
    stream = keys.for_workspace(workspace_id).ledger
    high = f"({cursor}" if cursor else "+"
    if filters.end_ms is not None and (
        cursor is None or filters.end_ms <= int(cursor.split("-", 1)[0])
    ):
        high = f"({filters.end_ms}-0"
    low = "-" if filters.start_ms is None else f"{filters.start_ms}-0"
    if above is not None and (filters.start_ms is None or (filters.start_ms, 0) <= _id_key(above)):
        low = f"({above}"
    if high == "(0-0":
        return  # nothing is older than the first possible id (and Redis rejects the range)
    while True:
        batch = entries(await client.xrevrange(stream, high, low, count=_BATCH))
        for entry_id, raw in batch:
            row = Row.parse(entry_id, raw)
            yield (row if filters.keep(row) else None), row.id
        if len(batch) < _BATCH:
            return
        high = f"({text(batch[-1][0])}"


def _id_key(row_id: str) -> tuple[int, int]:
    at_ms, seq = row_id.split("-", 1)
    return int(at_ms), int(seq)


async def one(
    client: Redis | RedisCluster,
    workspace_id: str,
    row_id: str,
    archive: Archive | None = None,
) -> Row | None:
    """One row by its id, from Redis or (once archived) from the archive."""
    stream = keys.for_workspace(workspace_id).ledger
    for entry_id, raw in entries(await client.xrange(stream, row_id, row_id, count=1)):
        return Row.parse(entry_id, raw)
    return await archive.row(workspace_id, row_id) if archive is not None else None


async def page(
    client: Redis | RedisCluster,
    workspace_id: str,
    filters: Filters,
    limit: int,
    cursor: str | None,
    archive: Archive | None = None,
) -> tuple[list[Row], str | None]:
    """One page of rows newest first and the cursor of the next page (None at the end)."""
    rows: list[Row] = []
    async for row in scan(client, workspace_id, filters, cursor, archive, batch=limit + 1):
        if len(rows) == limit:
            return rows, rows[-1].id
        rows.append(row)
    return rows, None


CSV_COLUMNS = (
    "id",
    "date",
    "type",
    "description",
    "amount_usd",
    "balance_after_usd",
    "reference",
    "user",
    "group",
    "from",
    "to",
    "direction",
    "duration_s",
    "segments",
    "pages",
    "rate_per_min_usd",
    "increment",
    "source",
    "cost_usd",
    "allowance_units",
    "commitment_usd",
    "universal_usd",
)


# OWASP "CSV injection": a spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Columns Gate formats itself as numbers: left as they are, so a spreadsheet can sum them.
_NUMERIC_COLUMNS = frozenset({4, 5, 15, 18, 19, 20, 21})


def safe_cell(value: str) -> str:
    """A cell a spreadsheet shows as text: formula-looking values get a leading quote."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _money_cells(row: Row) -> list[str]:
    """cost_usd, allowance_units, commitment_usd, universal_usd: what a usage row cost and
    which credits paid it (empty for credits and plan rows)."""
    cost = row.cost_micros()
    if cost is None:
        return ["", "", "", ""]
    units = commitment = universal = 0
    for part in row.paid_from():
        if part["source"] == "plan_allowance":
            units += part["units"]
        elif part["source"] == "commitment":
            commitment += part["micros"]
        else:
            universal += part["micros"]
    return [usd_str(cost), str(units), usd_str(commitment), usd_str(universal)]


def csv_lines(
    rows: Iterable[Row], workspace_column: str | None = None, office: str | None = None
) -> Iterable[str]:
    """CSV lines for rows; every cell that came from outside is guarded against injection.

    An organization's export starts each line with the workspace id and the office's name."""
    buf = io.StringIO()
    # "\r\n" makes the writer quote cells holding a carriage return (with "\n" it leaves
    # them bare and a lone \r splits the row in two); each line still ends in "\n".
    writer = csv.writer(buf, lineterminator="\r\n")
    for row in rows:
        rate = row.extra.get("rate_micros")
        values = [
            row.id,
            iso_ms(row.at_ms),
            row.type,
            row.description,
            usd_str(row.amount_micros),
            usd_str(row.balance_after_micros),
            row.reference,
            *(row.extra.get(c, "") for c in CSV_COLUMNS[7:15]),
            usd_str(int(rate)) if rate else "",
            row.extra.get("increment", ""),
            row.extra.get("source", ""),
            *_money_cells(row),
        ]
        values = [v if i in _NUMERIC_COLUMNS else safe_cell(v) for i, v in enumerate(values)]
        if workspace_column is not None:
            values[:0] = [safe_cell(workspace_column), safe_cell(office or "")]
        writer.writerow(values)
        yield buf.getvalue()[:-2] + "\n"
        buf.seek(0)
        buf.truncate()


def csv_header(with_workspace: bool = False) -> str:
    cols = ("workspace", "office", *CSV_COLUMNS) if with_workspace else CSV_COLUMNS
    return ",".join(cols) + "\n"


async def csv_chunks(
    client: Redis | RedisCluster,
    workspace_id: str,
    filters: Filters,
    archive: Archive | None = None,
    rows_per_chunk: int = 500,
) -> AsyncIterator[str]:
    """The whole CSV export, header first, in chunks of a few hundred rows: memory stays
    flat however many rows match (the HTTP export and `gate export` both stream these)."""
    yield csv_header()
    chunk: list[str] = []
    async for row in scan(client, workspace_id, filters, archive=archive):
        chunk.extend(csv_lines([row]))
        if len(chunk) >= rows_per_chunk:
            yield "".join(chunk)
            chunk.clear()
    if chunk:
        yield "".join(chunk)

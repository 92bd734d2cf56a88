"""Reading the audit log: filtered pages newest first, the CSV export, and the archive's part.

Entries are written by the scripts that make each change (lua/_audit.lua, gate/tenancy/
audit.py). A page reads the stream backwards from its cursor and stops after
`SCAN_BUDGET` entries even when fewer than `limit` matched, handing back a cursor where it
stopped: a rare filter over a million entries answers in bounded time, page by page, and the
client follows `next_cursor` (a short page is not the last one; a null cursor is).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gate.context import Context
from gate.errors import InvalidCursor, ValidationFailed
from gate.history.query import Query, _date_ms
from gate.store import keys
from gate.store.redis_client import entries, text

SCAN_BUDGET = 5000  # entries read per page at most, whatever the filters
FILTERS = ("action", "key_id", "person", "from", "to")
CSV_COLUMNS = ["id", "at", "workspace_id", "action", "key_id", "person", "ip", "target",
               "before", "after"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    workspace_id: str
    at_ms: int
    action: str
    key_id: str
    person: str
    ip: str
    target: str
    before: str  # JSON text
    after: str

    @classmethod
    def parse(cls, workspace_id: str, entry_id: bytes | str, raw: Mapping[Any, Any]) -> Entry:
        f = {text(k): text(v) for k, v in raw.items()}
        return cls(text(entry_id), workspace_id, int(f["at"]), f["action"], f["key_id"],
                   f["person"], f["ip"], f["target"], f["before"], f["after"])  # fmt: skip

    def record(self) -> dict[str, Any]:
        """The row of the SQL archive (gate/history/schema.py's audit_entries)."""
        ms, _, seq = self.id.partition("-")
        return {"stream_ms": int(ms), "stream_seq": int(seq), "at_ms": self.at_ms,
                "action": self.action, "key_id": self.key_id, "person": self.person,
                "ip": self.ip, "target": self.target, "before": self.before,
                "after": self.after}  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        at = datetime.fromtimestamp(self.at_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
        return {
            "id": self.id,
            "at": at,
            "workspace_id": self.workspace_id,
            "action": self.action,
            "key_id": self.key_id,
            "person": self.person or None,
            "ip": self.ip or None,
            "target": self.target,
            "before": orjson.loads(self.before or "{}"),
            "after": orjson.loads(self.after or "{}"),
        }


@dataclass(frozen=True, slots=True)
class Filters:
    action: str | None = None  # exact, or a prefix ending in "." (key. = every key change)
    key_id: str | None = None
    person: str | None = None
    from_ms: int | None = None
    to_ms: int | None = None

    def matches(self, e: Entry) -> bool:
        if self.action is not None:
            if self.action.endswith("."):
                if not e.action.startswith(self.action):
                    return False
            elif e.action != self.action:
                return False
        if self.key_id is not None and e.key_id != self.key_id:
            return False
        return self.person is None or e.person == self.person


def filters(query: Query) -> Filters:
    return Filters(
        action=query.get("action") or None,
        key_id=query.get("key_id") or None,
        person=query.get("person") or None,
        from_ms=_date_ms(query, "from"),
        to_ms=_date_ms(query, "to", end=True),
    )


def _check_cursor(cursor: str) -> str:
    ms, sep, seq = cursor.partition("-")
    if not (sep and ms.isdigit() and seq.isdigit() and len(ms) < 20 and len(seq) < 20):
        raise InvalidCursor("cursor is not one this API gave out; start again without it")
    return cursor


def stream_of(workspace_id: str | None) -> str:
    """A workspace's audit stream, or the platform's own (None: rate-card reloads)."""
    return keys.PLATFORM_AUDIT if workspace_id is None else keys.for_workspace(workspace_id).audit


async def page(
    ctx: Context, workspace_id: str | None, f: Filters, cursor: str | None, limit: int
) -> tuple[list[Entry], str | None]:
    """Up to `limit` matching entries older than the cursor, newest first, and the cursor
    to go on from (None: nothing older is left)."""
    if not 1 <= limit <= 500:
        raise ValidationFailed("limit must be from 1 to 500", field="limit")
    stream = stream_of(workspace_id)
    high = f"({_check_cursor(cursor)}" if cursor else "+"
    if f.to_ms is not None and not cursor:  # a cursor lies below `to` already
        high = f"{f.to_ms - 1}-{2**64 - 1}" if f.to_ms > 0 else "0-0"
    low = f"{f.from_ms}-0" if f.from_ms is not None else "-"
    found: list[Entry] = []
    scanned = 0
    last: str | None = None
    while len(found) < limit and scanned < SCAN_BUDGET:
        batch = entries(
            await ctx.client.xrevrange(stream, high, low, count=min(500, SCAN_BUDGET - scanned))
        )
        if not batch:
            return found, None
        for entry_id, raw in batch:
            scanned += 1
            last = text(entry_id)
            entry = Entry.parse(workspace_id or "", entry_id, raw)
            if f.matches(entry):
                found.append(entry)
                if len(found) == limit:
                    break
        if len(found) == limit:
            break
        high = f"({last}"
    if last is None:
        return found, None
    # Whether anything older is left: one more entry's worth of reading.
    more = entries(await ctx.client.xrevrange(stream, f"({last}", low, count=1))
    return found, last if more else None


async def scan(ctx: Context, workspace_id: str | None, f: Filters) -> AsyncIterator[Entry]:
    """Every matching entry, newest first (the CSV export)."""
    cursor: str | None = None
    while True:
        found, cursor = await page(ctx, workspace_id, f, cursor, 500)
        for entry in found:
            yield entry
        if cursor is None:
            return


def csv_header() -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(CSV_COLUMNS)
    return out.getvalue()


def csv_lines(found: list[Entry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for e in found:
        j = e.to_json()
        # A leading =, +, - or @ would make a spreadsheet run the cell as a formula.
        cells = [j["id"], j["at"], e.workspace_id, e.action, e.key_id, e.person, e.ip, e.target,
                 e.before, e.after]  # fmt: skip
        writer.writerow(["'" + c if c[:1] in ("=", "+", "-", "@") else c for c in map(str, cells)])
    return out.getvalue()

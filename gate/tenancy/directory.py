"""The directory: find a workspace by name, id, organization, number, call or provider
customer, and page through all of them, without scanning Redis.

The indexes are sorted sets on one slot (`keys.DIRECTORY`), each member "<term>\\0<ws>". A
workspace's own keys live on its own slot, so on Redis Cluster no script can write both; the
directory is kept by one rule instead: a term is added *before* the change that makes it true
and removed *after* the change that ends it, and every hit is checked against the
workspace's record when read. So the index is a superset of the truth for a moment, never
short of it: a search never misses a workspace, and a stale hit is dropped on the way out
(a term left stale by a crash is harmless: every read checks it).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gate.context import Context
from gate.errors import InvalidCursor, ValidationFailed
from gate.money import usd
from gate.store import keys
from gate.store.redis_client import text

D = keys.DIRECTORY
SEP = "\x00"
BACKFILL_VERSION = "1"
MAX_PAGE = 200


def member(term: str, workspace_id: str) -> str:
    return f"{term}{SEP}{workspace_id}"


def _created_term(created_ms: int) -> str:
    return f"{created_ms:015d}"


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        member = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        member = ""
    if not member:
        raise InvalidCursor("cursor is not one this API gave out; start again without it")
    return member


@dataclass(frozen=True, slots=True)
class Summary:
    """One row of the operator's list: who, how much money, what state, how busy."""

    id: str
    name: str
    organization_id: str | None
    created_ms: int
    balance_micros: int
    reserved_micros: int
    wallet_status: str  # active | suspended (balance at or below zero past the grace)
    state: str  # active | suspended | closing | closed (the platform's hold)
    hold_reason: str | None
    hold_ms: int | None
    live_calls: int
    last_activity_ms: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "organization_id": self.organization_id,
            "created_at": _iso(self.created_ms),
            "state": self.state,
            "hold_reason": self.hold_reason,
            "held_at": _iso(self.hold_ms),
            "wallet_status": self.wallet_status,
            "balance_usd": usd(self.balance_micros),
            "balance_micros": self.balance_micros,
            "reserved_micros": self.reserved_micros,
            "live_calls": self.live_calls,
            "last_activity_at": _iso(self.last_activity_ms),
        }


class Directory:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.client = ctx.client

    # Writes: a term before the change that makes it true, removed after the one ending it.

    async def add_workspace(
        self, workspace_id: str, name: str, created_ms: int, organization_id: str | None
    ) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(D.created, {member(_created_term(created_ms), workspace_id): 0})
            pipe.zadd(D.names, {member(name.lower(), workspace_id): 0})
            await pipe.execute()

    async def add_organization(self, organization_id: str, created_ms: int) -> None:
        await self.client.zadd(
            D.organizations, {member(_created_term(created_ms), organization_id): 0}
        )

    async def add_name(self, workspace_id: str, name: str) -> None:
        await self.client.zadd(D.names, {member(name.lower(), workspace_id): 0})

    async def drop_name(self, workspace_id: str, name: str) -> None:
        await self.client.zrem(D.names, member(name.lower(), workspace_id))

    async def add_number(self, workspace_id: str, number: str) -> None:
        await self.client.zadd(D.numbers, {member(number, workspace_id): 0})

    async def drop_number(self, workspace_id: str, number: str) -> None:
        await self.client.zrem(D.numbers, member(number, workspace_id))

    async def add_customer(self, workspace_id: str, customer: str) -> None:
        await self.client.zadd(D.customers, {member(customer, workspace_id): 0})

    async def add_held(self, workspace_id: str) -> None:
        await self.client.zadd(D.held, {workspace_id: 0})

    async def drop_held(self, workspace_id: str) -> None:
        await self.client.zrem(D.held, workspace_id)

    async def backfill(self) -> None:
        """Index the workspaces and organizations made before the directory existed (once)."""
        if text(await self.client.get(D.backfilled) or b"") == BACKFILL_VERSION:
            return
        ids = sorted(text(m) for m in await self.client.smembers(keys.WORKSPACES))
        orgs: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            async with self.client.pipeline(transaction=False) as pipe:
                for workspace_id in chunk:
                    k = keys.for_workspace(workspace_id)
                    pipe.hmget(k.ws, "name", "created_ms", "organization_id")
                    pipe.hget(k.wallet, "hold")
                    pipe.hgetall(k.numbers)
                replies = await pipe.execute()
            for i, workspace_id in enumerate(chunk):
                (name, created, org), hold, numbers = replies[3 * i : 3 * i + 3]
                if name is None or created is None:
                    continue  # a create that crashed before its script ran
                await self.add_workspace(workspace_id, text(name), int(created), None)
                for number in numbers:
                    await self.add_number(workspace_id, text(number))
                if hold:
                    await self.add_held(workspace_id)
                if org:
                    orgs.setdefault(text(org), int(created))
        for organization_id, created_ms in orgs.items():
            raw = await self.client.hget(keys.for_organization(organization_id).org, "created_ms")
            await self.add_organization(organization_id, int(raw) if raw else created_ms)
        await self.client.set(D.backfilled, BACKFILL_VERSION)

    # Reads

    async def _lex(
        self, key: str, low: str, high: str, cursor: str | None, limit: int, newest_first: bool
    ) -> tuple[list[str], str | None]:
        """Members between low and high (inclusive prefixes), a page after the cursor."""
        if cursor is not None:
            after = decode_cursor(cursor)
            if newest_first:
                high = "(" + after
            else:
                low = "(" + after
        if newest_first:
            members = await self.client.zrevrangebylex(key, high, low, start=0, num=limit + 1)
        else:
            members = await self.client.zrangebylex(key, low, high, start=0, num=limit + 1)
        found = [text(m) for m in members]
        more = len(found) > limit
        found = found[:limit]
        return found, encode_cursor(found[-1]) if more and found else None

    async def page(
        self, filters: dict[str, str], cursor: str | None, limit: int
    ) -> tuple[list[Summary], str | None]:
        """One page of workspaces matching the filters (every one when none), each checked
        against its record; and the cursor of the next page (None: the last)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailed(f"limit must be from 1 to {MAX_PAGE}", field="limit")
        await self.backfill()
        unknown = set(filters) - {"q", "organization_id", "number", "call_id", "customer", "state"}
        if unknown:
            raise ValidationFailed(
                f"unknown filter {sorted(unknown)[0]!r}; filter by q (name prefix or id), "
                "organization_id, number, call_id, customer or state",
                field=sorted(unknown)[0],
            )
        ids: list[str]
        next_cursor: str | None = None
        q = filters.get("q", "").strip()
        if q.startswith("ws_"):
            ids = [q]
        elif "number" in filters:
            ids, next_cursor = await self._exact(D.numbers, filters["number"], cursor, limit)
        elif "customer" in filters:
            ids, next_cursor = await self._exact(D.customers, filters["customer"], cursor, limit)
        elif "call_id" in filters:
            ids = await self._by_call(filters["call_id"])
        elif "organization_id" in filters:
            ids, next_cursor = await self._organization(filters["organization_id"], cursor, limit)
        elif q:
            members, next_cursor = await self._lex(
                D.names, "[" + q.lower(), "[" + q.lower() + "\xff", cursor, limit, False
            )
            ids = [m.rsplit(SEP, 1)[1] for m in members]
        elif filters.get("state") in ("suspended", "closing", "closed"):
            members, next_cursor = await self._lex(D.held, "-", "+", cursor, limit, False)
            ids = members
        else:
            members, next_cursor = await self._lex(D.created, "-", "+", cursor, limit, True)
            ids = [m.rsplit(SEP, 1)[1] for m in members]
        rows = await self.summaries(ids)
        rows = [r for r in rows if self._matches(r, filters)]
        return rows, next_cursor

    async def _exact(
        self, key: str, term: str, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        members, next_cursor = await self._lex(
            key, "[" + term + SEP, "[" + term + SEP + "\xff", cursor, limit, False
        )
        ids = [m.rsplit(SEP, 1)[1] for m in members]
        # A term added ahead of its change (or left by a crash) is checked here.
        checked = []
        for workspace_id in ids:
            if key == D.numbers:
                ok = await self.client.hexists(keys.for_workspace(workspace_id).numbers, term)
            else:  # the provider's customer, as the Stripe provider stored it
                stored = await self.client.hget(f"{keys.for_workspace(workspace_id).ws}:stripe",
                                                "customer")  # fmt: skip
                ok = stored is not None and text(stored) == term
            if ok:
                checked.append(workspace_id)
        return checked, next_cursor

    async def _by_call(self, call_id: str) -> list[str]:
        """The workspace of a call: the service-wide switch's owner record, else the archive's
        ledger rows naming the call (ended calls of any key)."""
        owner = await self.client.get(keys.call_owner(call_id))
        if owner is not None:
            return [text(owner)]
        if self.ctx.archive is not None:
            return await self.ctx.archive.workspaces_of_reference(call_id)
        return []

    async def _organization(
        self, organization_id: str, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        members = sorted(
            text(m)
            for m in await self.client.smembers(keys.for_organization(organization_id).workspaces)
        )
        if cursor is not None:
            after = decode_cursor(cursor)
            members = [m for m in members if m > after]
        page = members[:limit]
        return page, encode_cursor(page[-1]) if len(members) > limit else None

    @staticmethod
    def _matches(row: Summary, filters: dict[str, str]) -> bool:
        if (org := filters.get("organization_id")) and row.organization_id != org:
            return False
        if (state := filters.get("state")) and row.state != state:
            return False
        q = filters.get("q", "").strip()
        if q.startswith("ws_"):
            return row.id == q
        return not q or row.name.lower().startswith(q.lower()) or "number" in filters

    async def summaries(self, workspace_ids: Sequence[str]) -> list[Summary]:
        """Each workspace's summary, in the order given; ids with no record are left out."""
        if not workspace_ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for workspace_id in workspace_ids:
                k = keys.for_workspace(workspace_id)
                pipe.hmget(k.ws, "id", "name", "organization_id", "created_ms")
                pipe.hmget(k.wallet, "balance", "reserved", "status", "hold", "hold_reason",
                           "hold_ms", "ledger_ms")  # fmt: skip
                pipe.hlen(k.live)
            replies = await pipe.execute()
        rows = []
        for i in range(len(workspace_ids)):
            ws, w, live = replies[3 * i : 3 * i + 3]
            if ws[0] is None:
                continue
            balance, reserved, status, hold, reason, hold_ms, ledger_ms = w
            rows.append(
                Summary(
                    id=text(ws[0]),
                    name=text(ws[1]),
                    organization_id=text(ws[2]) if ws[2] else None,
                    created_ms=int(ws[3]),
                    balance_micros=int(balance or 0),
                    reserved_micros=int(reserved or 0),
                    wallet_status=text(status or b"active"),
                    state=text(hold) if hold else "active",
                    hold_reason=text(reason) if reason else None,
                    hold_ms=int(hold_ms) if hold_ms else None,
                    live_calls=int(live),
                    last_activity_ms=int(ledger_ms) if ledger_ms and int(ledger_ms) else None,
                )
            )
        return rows

    async def organizations(
        self, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Organizations, newest first, each with its offices' summaries."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailed(f"limit must be from 1 to {MAX_PAGE}", field="limit")
        await self.backfill()
        members, next_cursor = await self._lex(D.organizations, "-", "+", cursor, limit, True)
        out = []
        for member in members:
            organization_id = member.rsplit(SEP, 1)[1]
            k = keys.for_organization(organization_id)
            name = await self.client.hget(k.org, "name")
            offices = sorted(text(m) for m in await self.client.smembers(k.workspaces))
            rows = await self.summaries(offices)
            out.append(
                {
                    "id": organization_id,
                    "name": text(name) if name else None,
                    "offices": [r.to_json() for r in rows],
                    "total_balance_micros": sum(r.balance_micros for r in rows),
                    "total_balance_usd": usd(sum(r.balance_micros for r in rows)),
                }
            )
        return out, next_cursor

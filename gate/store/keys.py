"""Redis key names: every key of a workspace carries the hash tag {<workspace_id>}.

One Lua script touches the keys of one workspace only, so every script runs on one slot and
the same code works on a single Redis and on Redis Cluster. The few global keys (the
workspace registry and the due indexes) are touched outside scripts only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

PREFIX = "gate"
WORKSPACES = f"{PREFIX}:workspaces"  # set of every workspace id (for `gate check`, sweeps)
TICK_INDEX = f"{PREFIX}:due:tick"  # zset workspace id -> earliest due ms of its live calls
OUTBOX_INDEX = f"{PREFIX}:due:outbox"  # zset workspace id -> earliest undelivered event ms
AUTOMATION_INDEX = f"{PREFIX}:due:wallet"  # zset workspace id -> auto-recharge/mail due ms
RENT_INDEX = f"{PREFIX}:due:rent"  # zset workspace id -> earliest number renewal ms
CYCLE_INDEX = f"{PREFIX}:due:cycle"  # zset workspace id -> end ms of its plan's cycle
KEYS_REVOKED = f"{PREFIX}:keys:revoked"  # pub/sub channel: a workspace whose key was revoked
PLATFORM_AUDIT = f"{PREFIX}:{{platform}}:audit"  # stream: platform-wide changes (rate cards)


@dataclass(frozen=True, slots=True)
class DirectoryKeys:
    """The operator's indexes over every workspace (gate/operator/directory.py): sorted sets
    of score 0 read by ZRANGEBYLEX, members "<term>\\0<workspace id>", on one slot."""

    created: str  # "<created ms, 15 digits>\0<ws>": every workspace, newest last
    names: str  # "<name, lower case>\0<ws>"
    numbers: str  # "<E.164 number>\0<ws>": numbers rented
    customers: str  # "<provider customer id>\0<ws>"
    held: str  # "<ws>": workspaces the platform suspended or closed
    organizations: str  # "<created ms, 15 digits>\0<org id>": every organization
    backfilled: str  # string: the directory version the one-time backfill reached


DIRECTORY = DirectoryKeys(
    *(f"{PREFIX}:{{dir}}:{name}" for name in
      ("created", "names", "numbers", "customers", "held", "organizations", "backfilled"))
)  # fmt: skip


def number_owner(number: str) -> str:
    """string: the workspace renting an E.164 number, so one number has one tenant."""
    return f"{PREFIX}:numberws:{number}"


def call_owner(call_id: str) -> str:
    """string: the workspace of a call started with the service-wide switch key (with TTL)."""
    return f"{PREFIX}:callws:{call_id}"


@dataclass(frozen=True, slots=True)
class WsKeys:
    """The keys of one workspace."""

    ws: str  # hash: name, organization, webhook secret, settings
    wallet: str  # hash: balance, reserved, version, status, counters
    keys: str  # hash: sha256(api key) -> "<role> <key id>"
    ledger: str  # stream: one entry per balance change, id = "<at ms>-<n>"
    events: str  # stream: outbox of events (webhooks, SSE)
    refs: str  # hash: external reference (payment id, charge id) -> ledger row id
    live: str  # hash: call id -> MessagePack record of each live call (see lua/_call.lua)
    due: str  # zset: call id -> next due ms (tick or cut)
    cuts: str  # set: ids of live calls that are limited (woken when money arrives)
    ended: str  # hash: call id -> MessagePack result of call_end (kept 24 h)
    ended_at: str  # zset: call id -> end ms, to trim `ended`
    outbox: str  # hash: delivery state of the events stream (cursor, attempts)
    deadletter: str  # stream: events whose delivery gave up
    numbers: str  # hash: rented number -> JSON record (see lua/number_rent-7.lua)
    rent_due: str  # zset: rented number -> ms of its next renewal attempt
    audit: str  # stream: the audit log, every change that is not a ledger row (_audit.lua)

    @property
    def call_keys(self) -> tuple[str, ...]:
        """The nine keys every call script takes, in header order."""
        return (
            self.ws,
            self.wallet,
            self.live,
            self.due,
            self.cuts,
            self.ledger,
            self.events,
            self.ended,
            self.ended_at,
        )

    def post_keys(self, idem: str) -> list[str]:
        """The eight keys of post.lua, in header order."""
        return [
            self.ws,
            self.wallet,
            self.ledger,
            self.events,
            self.refs,
            idem,
            self.cuts,
            self.due,
        ]

    @property
    def rent_keys(self) -> list[str]:
        """The seven keys of the number rental scripts, in header order."""
        return [self.ws, self.wallet, self.ledger, self.events, self.refs, self.numbers,
                self.rent_due]  # fmt: skip

    def idem(self, key: str) -> str:
        """Idempotency record of one Idempotency-Key."""
        return f"{self.ws}:idem:{key}"


@lru_cache(maxsize=65536)  # built on every request: the hot path reuses them
def for_workspace(workspace_id: str) -> WsKeys:
    base = f"{PREFIX}:{{{workspace_id}}}"
    return WsKeys(
        ws=base,
        wallet=f"{base}:wallet",
        keys=f"{base}:keys",
        ledger=f"{base}:ledger",
        events=f"{base}:events",
        refs=f"{base}:refs",
        live=f"{base}:live",
        due=f"{base}:due",
        cuts=f"{base}:cuts",
        ended=f"{base}:ended",
        ended_at=f"{base}:ended_at",
        outbox=f"{base}:outbox",
        deadletter=f"{base}:deadletter",
        numbers=f"{base}:numbers",
        rent_due=f"{base}:rent_due",
        audit=f"{base}:audit",
    )


@dataclass(frozen=True, slots=True)
class OrgKeys:
    """The keys of one organization (a company grouping workspaces, its offices).

    Touched outside scripts only; the hash tag keeps both on one slot for a pipeline.
    """

    org: str  # hash: id, name, created_ms
    workspaces: str  # set: ids of the organization's workspaces


def for_organization(organization_id: str) -> OrgKeys:
    base = f"{PREFIX}:org:{{{organization_id}}}"
    return OrgKeys(org=base, workspaces=f"{base}:workspaces")

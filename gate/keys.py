"""Redis key names: every key of a workspace carries the hash tag {<workspace_id>}.

One Lua script touches the keys of one workspace only, so every script runs on one slot and
the same code works on a single Redis and on Redis Cluster. The few global keys (the
workspace registry and the due indexes) are touched outside scripts only.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "gate"
WORKSPACES = f"{PREFIX}:workspaces"  # set of every workspace id (for `gate check`, sweeps)
TICK_INDEX = f"{PREFIX}:due:tick"  # zset workspace id -> earliest due ms of its live calls
OUTBOX_INDEX = f"{PREFIX}:due:outbox"  # zset workspace id -> earliest undelivered event ms


@dataclass(frozen=True, slots=True)
class WsKeys:
    """The keys of one workspace."""

    ws: str  # hash: name, organization, webhook secret, settings
    wallet: str  # hash: balance, reserved, version, status, counters
    keys: str  # hash: sha256(api key) -> "<role> <key id>"
    ledger: str  # stream: one entry per balance change, id = "<at ms>-<n>"
    events: str  # stream: outbox of events (webhooks, SSE)
    refs: str  # hash: external reference (payment id, charge id) -> ledger row id
    live: str  # set: ids of the live calls (started, not yet ended)
    due: str  # zset: call id -> next due ms (tick or cut)

    def idem(self, key: str) -> str:
        """Idempotency record of one Idempotency-Key."""
        return f"{self.ws}:idem:{key}"

    def call(self, call_id: str) -> str:
        """Hash of one call's state."""
        return f"{self.ws}:call:{call_id}"


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
    )

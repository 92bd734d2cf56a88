"""Workspaces: creation with the signup credit, keys, and the workspace settings record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gate.context import Context
from gate.errors import HeldByPlatform, NotFound, ValidationFailed
from gate.money import usd
from gate.store import keys
from gate.store.redis_client import text
from gate.store.scripts import Code
from gate.tenancy.apikeys import KeyRecord, quote_person
from gate.tenancy.audit import SYSTEM, Actor
from gate.tenancy.auth import Role, new_key, new_webhook_secret, new_workspace_id
from gate.tenancy.directory import Directory


@dataclass(frozen=True, slots=True)
class Created:
    id: str
    name: str
    key: str
    key_id: str
    balance_micros: int


@dataclass(frozen=True, slots=True)
class Workspace:
    """The workspace record with service-wide defaults filled in."""

    id: str
    name: str
    organization_id: str | None
    created_ms: int
    webhook_secret: str
    switch_webhook_url: str | None
    inbound_limit_threshold_micros: int | None  # None: the call's own buffer
    inbound_grace_s: int
    max_concurrent_calls: int | None
    payment_method_id: str | None
    raw: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        threshold = self.inbound_limit_threshold_micros
        return {
            "id": self.id,
            "name": self.name,
            "organization_id": self.organization_id,
            "switch_webhook_url": self.switch_webhook_url,
            "webhook_secret": self.webhook_secret,
            "inbound_limit_threshold_usd": None if threshold is None else usd(threshold),
            "inbound_limit_threshold_micros": threshold,
            "inbound_grace_s": self.inbound_grace_s,
            "max_concurrent_calls": self.max_concurrent_calls,
        }


def _opt_int(value: str | None) -> int | None:
    return None if value is None else int(value)


class Workspaces:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def create(
        self, name: str, organization_id: str | None = None, actor: Actor = SYSTEM
    ) -> Created:
        if not name.strip() or len(name) > 200:
            raise ValidationFailed("name must be 1 to 200 characters", field="name")
        workspace_id = new_workspace_id()
        key, key_hash, key_id = new_key(workspace_id)
        k = keys.for_workspace(workspace_id)
        # Registry first: a crash in between leaves an id that `gate check` skips, never a
        # workspace nobody can find.
        now_ms = self.ctx.clock.now_ms()
        await self.ctx.client.sadd(keys.WORKSPACES, workspace_id)
        await Directory(self.ctx).add_workspace(workspace_id, name, now_ms, organization_id)
        reply = await self.ctx.scripts.call(
            "workspace_create",
            [k.ws, k.wallet, k.keys, k.ledger, k.events, k.audit],
            [
                now_ms,
                workspace_id,
                name,
                organization_id or "",
                new_webhook_secret(),
                self.ctx.settings.signup_credit_micros,
                key_hash,
                key_id,
                *actor.args(),
            ],
        )
        if self.ctx.settings.switch_webhook_url:  # deliver the signup credit's event now
            self.ctx.notifier.events(workspace_id)
        if reply[0] != Code.OK:  # a 64-bit random id collided: astronomically unlikely
            raise RuntimeError(f"workspace id {workspace_id} exists already")
        return Created(workspace_id, name, key, key_id, int(reply[1]))

    async def create_key(
        self,
        workspace_id: str,
        role: Role,
        expires_ms: int = 0,
        *,
        person: str = "",
        actor: Actor = SYSTEM,
    ) -> tuple[str, str]:
        """A new key of `role` (refused after expires_ms unless 0), for `person` when one is
        named; returns (key, key id). The key is never stored."""
        key, key_hash, key_id = new_key(workspace_id)
        k = keys.for_workspace(workspace_id)
        hold = await self.ctx.client.hmget(k.wallet, "hold", "hold_reason")
        if hold[0] is not None and text(hold[0]) in ("closing", "closed"):
            # Its keys were revoked at the close: none is made again (an org_admin of
            # another office could otherwise reopen it).
            raise HeldByPlatform(text(hold[0]), text(hold[1] or b""))
        reply = await self.ctx.scripts.call(
            "key_create",
            [k.ws, k.keys, k.audit],
            [key_hash, role.name, key_id, expires_ms, quote_person(person),
             self.ctx.clock.now_ms(), *actor.args()],
        )  # fmt: skip
        if reply[0] == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        return key, key_id

    async def list_keys(self, workspace_id: str) -> list[KeyRecord]:
        """The workspace's keys (never their secrets or hashes), by id."""
        k = keys.for_workspace(workspace_id)
        raw = await self.ctx.client.hgetall(k.keys)
        if not raw and not await self.ctx.client.exists(k.ws):
            raise NotFound("no such workspace")
        return sorted((KeyRecord.parse(text(v)) for v in raw.values()), key=lambda r: r.id)

    async def revoke_key(self, workspace_id: str, key_id: str, actor: Actor = SYSTEM) -> None:
        """Delete a key; every gate process stops accepting it at once (see tenancy/auth.py)."""
        k = keys.for_workspace(workspace_id)
        reply = await self.ctx.scripts.call(
            "key_revoke",
            [k.ws, k.keys, k.audit],
            [key_id, keys.KEYS_REVOKED, workspace_id, self.ctx.clock.now_ms(), "key.revoked",
             *actor.args()],
        )  # fmt: skip
        if reply[0] == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        if reply[0] == Code.NOT_FOUND:
            raise NotFound(
                f"no key {key_id[:40]!r} in this workspace; list them with GET "
                f"/v1/workspaces/{workspace_id}/keys"
            )

    async def expire_key(self, workspace_id: str, key_id: str) -> None:
        """A key found past its expiry: the audit log says so, once (the key stays listed)."""
        k = keys.for_workspace(workspace_id)
        await self.ctx.scripts.call(
            "key_expired", [k.ws, f"{k.keys}:expired", k.audit], [key_id, self.ctx.clock.now_ms()]
        )

    async def get(self, workspace_id: str) -> Workspace:
        raw = await self.ctx.client.hgetall(keys.for_workspace(workspace_id).ws)
        if not raw:
            raise NotFound("no such workspace")
        return self.parse(raw)

    def parse(self, raw_reply: Mapping[bytes | str, bytes | str]) -> Workspace:
        raw = {text(k): text(v) for k, v in raw_reply.items()}
        grace = raw.get("inbound_grace_s")
        return Workspace(
            id=raw["id"],
            name=raw["name"],
            organization_id=raw.get("organization_id") or None,
            created_ms=int(raw["created_ms"]),
            webhook_secret=raw["webhook_secret"],
            switch_webhook_url=raw.get("switch_webhook_url"),
            inbound_limit_threshold_micros=_opt_int(raw.get("inbound_limit_threshold_micros")),
            inbound_grace_s=self.ctx.settings.inbound_grace_s if grace is None else int(grace),
            max_concurrent_calls=_opt_int(raw.get("max_concurrent_calls")),
            payment_method_id=raw.get("payment_method_id"),
            raw=raw,
        )

    async def update(
        self,
        workspace_id: str,
        fields: dict[str, str | int | None],
        actor: Actor = SYSTEM,
        action: str = "workspace.updated",
    ) -> int:
        """Set fields of the record; None removes one (back to the service default). The
        audit log records who changed which field from what to what, in the same step.

        Returns the wallet's new version (0 when there was nothing to change).
        """
        if not fields:
            return 0
        k = keys.for_workspace(workspace_id)
        renamed = await self.ctx.client.hget(k.ws, "name") if fields.get("name") else None
        if renamed is not None:  # the directory's rule: the new name before, the old after
            await Directory(self.ctx).add_name(workspace_id, str(fields["name"]))
        args: list[str | int] = [self.ctx.clock.now_ms(), action, *actor.args()]
        for name, value in fields.items():
            if value == "":
                raise ValueError(f"{name}: an empty value would remove the field; use None")
            args += [name, "" if value is None else value]
        reply = await self.ctx.scripts.call("workspace_update", [k.ws, k.wallet, k.audit], args)
        if reply[0] == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        if renamed is not None and text(renamed).lower() != str(fields["name"]).lower():
            await Directory(self.ctx).drop_name(workspace_id, text(renamed))
        return int(reply[1])

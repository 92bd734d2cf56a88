"""Workspaces, API keys and who may do what.

A workspace key reads `gk_<workspace id>_<secret>`: the workspace id in the key lets the gate
find the key's record in that workspace's own hash (one slot, one lookup), and only the
SHA-256 of the whole key is stored. Lookups are cached in-process for a few seconds so a call
decision costs one Redis round trip, not two.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum

from redis.asyncio import Redis, RedisCluster

from gate.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from gate.store import keys
from gate.store.redis_client import text
from gate.tenancy.apikeys import KeyRecord

WORKSPACE_ID = re.compile(r"^ws_[0-9a-f]{16}$")


class Role(IntEnum):
    """Roles, weakest first: a key may do everything every role below its own may.

    Except the call routes: they move money on the platform's word, so they take a `switch`
    key and nothing else (`Principal.require_switch`), and only the platform issues those.
    A workspace's own admin can read what a switch reads, but never act as one.
    """

    agent = 1
    switch = 2
    admin = 3
    org_admin = 4
    platform = 5

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value]
        except KeyError:
            names = ", ".join(r.name for r in cls)
            raise ValidationFailed(f"role must be one of {names}", field="role") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a platform key (workspace None) or a key of one workspace."""

    role: Role
    workspace_id: str | None
    key_id: str
    # org_admin keys: their organization and its workspaces, read at authentication.
    organization_id: str | None = None
    org_workspaces: frozenset[str] = frozenset()
    person: str = ""  # the person a short-lived key was issued to ("" a shared key)

    @property
    def every_workspace(self) -> bool:
        """The platform key, or the service-wide switch key (GATE_SWITCH_KEY)."""
        return self.workspace_id is None and self.role in (Role.platform, Role.switch)

    def require(self, role: Role) -> None:
        if self.role < role:
            raise Forbidden(f"this needs a key of role {role.name} or higher")

    def require_switch(self) -> None:
        """The call routes: the platform's switch key only, never a tenant's own key."""
        if self.role is not Role.switch:
            raise Forbidden(
                "the call routes take a switch key, which the platform issues; a workspace's "
                "own keys cannot start, answer or end calls: ask the platform operator for one"
            )

    def workspace(self, workspace_id: str | None = None) -> str:
        """The workspace this call acts on; another tenant's workspace is simply not found."""
        if workspace_id is None:
            if self.workspace_id is None:
                raise ValidationFailed(
                    "a platform key must name the workspace: use a workspace's own key"
                )
            return self.workspace_id
        if workspace_id == self.workspace_id or (
            self.every_workspace and WORKSPACE_ID.match(workspace_id)
        ):
            return workspace_id
        if self.role is Role.org_admin and workspace_id in self.org_workspaces:
            return workspace_id  # another office of the same organization
        raise NotFound("no such workspace")


def new_workspace_id() -> str:
    return f"ws_{secrets.token_hex(8)}"


def new_key(workspace_id: str) -> tuple[str, str, str]:
    """A fresh key: (key shown once, its sha256 hex, its public id)."""
    key = f"gk_{workspace_id}_{secrets.token_urlsafe(24)}"
    return key, hash_key(key), f"key_{secrets.token_hex(6)}"


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    """Turns an Authorization header into a Principal, with a short in-process cache."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        platform_key: str | None,
        cache_s: float = 5.0,
        switch_key: str | None = None,
    ) -> None:
        self.client = client
        self.platform_key = platform_key
        self.switch_key = switch_key
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal]] = {}
        # Called with (workspace id, key id) when a key is found past its expiry, so the key
        # is deleted and the audit log says it expired (Workspaces.expire_key).
        self.on_expired: Callable[[str, str], Awaitable[None]] | None = None

    async def authenticate(self, header: str | None) -> Principal:
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("send your API key as 'Authorization: Bearer <key>'")
        key = header[7:].strip()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal, expires_in_s = await self._lookup(key)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = (now + min(self.cache_s, expires_in_s), principal)
        return principal

    def forget_workspace(self, workspace_id: str) -> None:
        """Drop the cached keys of a workspace (one of its keys was revoked)."""
        for key in [k for k, (_, p) in self._cache.items() if p.workspace_id == workspace_id]:
            del self._cache[key]

    def forget_all(self) -> None:
        self._cache.clear()

    async def _lookup(self, key: str) -> tuple[Principal, float]:
        """Who the key is, and for how many more seconds it is valid (inf: no expiry)."""
        if self.platform_key and hmac.compare_digest(key.encode(), self.platform_key.encode()):
            return Principal(Role.platform, None, "platform"), math.inf
        if self.switch_key and hmac.compare_digest(key.encode(), self.switch_key.encode()):
            return Principal(Role.switch, None, "service_switch"), math.inf
        # gk_ + the 19-character workspace id + _ + secret (the secret may contain "_")
        workspace_id = key[3:22]
        if not (key.startswith("gk_") and key[22:23] == "_" and WORKSPACE_ID.match(workspace_id)):
            raise Unauthorized("unknown API key; create one with POST /v1/workspaces/{id}/keys")
        record = await self.client.hget(keys.for_workspace(workspace_id).keys, hash_key(key))
        if record is None:
            raise Unauthorized("unknown API key; create one with POST /v1/workspaces/{id}/keys")
        stored = KeyRecord.parse(text(record))
        left_s = (stored.expires_ms / 1000 - time.time()) if stored.expires_ms else math.inf
        if left_s <= 0:
            if self.on_expired is not None:
                await self.on_expired(workspace_id, stored.id)
            raise Unauthorized("this API key has expired; create a new one")
        if Role[stored.role] is Role.org_admin:
            return await self._org_admin(workspace_id, stored.id, stored.person), left_s
        return Principal(Role[stored.role], workspace_id, stored.id, person=stored.person), left_s

    async def _org_admin(self, workspace_id: str, key_id: str, person: str) -> Principal:
        """An org_admin key with its organization's workspaces (none: its own only)."""
        org = await self.client.hget(keys.for_workspace(workspace_id).ws, "organization_id")
        if not org:
            return Principal(Role.org_admin, workspace_id, key_id, person=person)
        members = await self.client.smembers(keys.for_organization(text(org)).workspaces)
        return Principal(
            Role.org_admin,
            workspace_id,
            key_id,
            organization_id=text(org),
            org_workspaces=frozenset(text(m) for m in members),
            person=person,
        )

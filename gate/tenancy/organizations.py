"""Organizations: a company grouping workspaces (its offices), and who may see which.

An organization is created by the platform; workspaces are created inside one and stay
there (moving one is not offered). An `org_admin` key belongs to one workspace of the
organization and acts on every workspace of it; the membership set it sees is read when the
key is authenticated (and cached with it for a few seconds).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from gate.context import Context
from gate.errors import NotFound, ValidationFailed
from gate.store import keys
from gate.store.redis_client import text
from gate.tenancy.directory import Directory

ORGANIZATION_ID = re.compile(r"^org_[0-9a-f]{16}$")


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    name: str
    created_ms: int


class Organizations:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def create(self, name: str) -> Organization:
        if not name.strip() or len(name) > 200:
            raise ValidationFailed("name must be 1 to 200 characters", field="name")
        org = Organization(f"org_{secrets.token_hex(8)}", name, self.ctx.clock.now_ms())
        await Directory(self.ctx).add_organization(org.id, org.created_ms)
        await self.ctx.client.hset(
            keys.for_organization(org.id).org,
            mapping={"id": org.id, "name": org.name, "created_ms": org.created_ms},
        )
        return org

    async def get(self, organization_id: str) -> Organization:
        raw = None
        if ORGANIZATION_ID.match(organization_id):
            raw = await self.ctx.client.hgetall(keys.for_organization(organization_id).org)
        if not raw:
            raise NotFound(
                "no such organization; create one with POST /v1/organizations (platform key)"
            )
        f = {text(k): text(v) for k, v in raw.items()}
        return Organization(f["id"], f["name"], int(f["created_ms"]))

    async def add_workspace(self, organization_id: str, workspace_id: str) -> None:
        await self.ctx.client.sadd(keys.for_organization(organization_id).workspaces, workspace_id)

    async def workspaces(self, organization_id: str) -> list[str]:
        members = await self.ctx.client.smembers(keys.for_organization(organization_id).workspaces)
        return sorted(text(m) for m in members)

"""Which workspace a call belongs to, for the service-wide switch key (one switch, many tenants).

The start names the workspace; the answer, heartbeats and end name only the call (the SIP
Call-ID), so the start records `call id -> workspace` in one global key per call, kept as
long as the call can live plus a day (the `ended` results are kept a day too). It is written
before the start's script runs, so an end can never find the call without its owner.
"""

from __future__ import annotations

from redis.asyncio import Redis, RedisCluster

from gate.errors import Conflict, NotFound
from gate.settings import Settings
from gate.store import keys
from gate.store.redis_client import text


class CallOwners:
    def __init__(self, client: Redis | RedisCluster, settings: Settings) -> None:
        self.client = client
        self.ttl_s = settings.max_call_s + settings.ring_timeout_s + 86400

    async def claim(self, call_id: str, workspace_id: str) -> None:
        """Record the call's workspace; a call id another workspace holds is a conflict."""
        key = keys.call_owner(call_id)
        if await self.client.set(key, workspace_id, nx=True, ex=self.ttl_s):
            return
        owner = await self.client.get(key)
        if owner is not None and text(owner) != workspace_id:
            raise Conflict(
                f"call_id {call_id[:64]!r} is in use by another workspace of this switch; "
                "a switch's call ids must be unique across the workspaces it serves"
            )

    async def find(self, call_id: str) -> str | None:
        owner = await self.client.get(keys.call_owner(call_id))
        return None if owner is None else text(owner)

    async def require(self, call_id: str) -> str:
        owner = await self.find(call_id)
        if owner is None:
            raise NotFound(
                f"no call {call_id[:64]!r} started with the service-wide switch key; an end "
                "for a call Gate never saw must name its workspace_id"
            )
        return owner

"""API key records as stored, their expiry, and the revocation listener of each process.

A workspace's keys hash maps sha256(key) -> "<role> <key id>[ <expires ms>[ <person>]]"
(lua/key_create-3.lua; the person percent-encoded, so the record splits on spaces).
Revocation (lua/key_revoke-3.lua) deletes the field and publishes the workspace id on
`gate:keys:revoked`; every process listens (`listen_for_revocations`) and drops that
workspace's keys from its authentication cache, so a revoked key stops working everywhere
at once rather than after the cache's few seconds. On Redis Cluster the listener subscribes on
the node of the channel's slot; the cluster bus relays a PUBLISH made on any node to it.
Whenever the listener may have missed a message (it is (re)connecting), it drops the whole
cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from redis.asyncio import Redis, RedisCluster

from gate.store import keys
from gate.store.circuit import is_unavailable
from gate.store.redis_client import text

log = logging.getLogger("gate.tenancy.apikeys")

RETRY_S = 0.5  # between attempts to (re)subscribe while Redis is away


def quote_person(person: str) -> str:
    """A person's name as stored in a key record: no spaces, nothing lost."""
    return quote(person, safe="@.+-_")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    role: str
    id: str
    expires_ms: int  # 0: never
    person: str = ""  # the person a short-lived key was issued to ("" a shared key)

    @classmethod
    def parse(cls, value: str) -> KeyRecord:
        role, key_id, *rest = value.split(" ")
        person = unquote(rest[1]) if len(rest) > 1 else ""
        return cls(role, key_id, int(rest[0]) if rest else 0, person)

    def expired(self, now_ms: int | None = None) -> bool:
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        return 0 < self.expires_ms <= now

    def to_json(self) -> dict[str, Any]:
        expires = None
        if self.expires_ms:
            expires = datetime.fromtimestamp(self.expires_ms / 1000, UTC).isoformat()
            expires = expires.replace("+00:00", "Z")
        return {
            "id": self.id,
            "role": self.role,
            "expires_at": expires,
            "expired": self.expired(),
            "person": self.person or None,
        }


async def listen_for_revocations(
    client: Redis | RedisCluster,
    forget_workspace: Callable[[str], None],
    forget_all: Callable[[], None],
) -> None:
    """Run until cancelled: drop cached keys of every workspace whose key was revoked."""
    while True:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(keys.KEYS_REVOKED)
            forget_all()  # anything revoked while not subscribed is forgotten too
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if message is not None and message.get("type") == "message":
                    forget_workspace(text(message["data"]))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            forget_all()
            if not is_unavailable(err):  # an outage is logged once, by the circuit
                log.exception("revocation listener failed; resubscribing")
            await asyncio.sleep(RETRY_S)
        finally:
            await pubsub.aclose()

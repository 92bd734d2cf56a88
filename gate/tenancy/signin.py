"""A key per person: one-time sign-in links that mint short-lived, person-named keys.

The platform asks for a link for one person of a workspace (`issue`) and sends it to them
(mail, chat, its own app); opening it on the billing page redeems it (`redeem`) for an
`admin` or `agent` key named for that person and valid for a few hours. The link's token is
`gsl_<workspace id>_<secret>`: 192 random bits, only its SHA-256 kept in Redis, deleted by the
redemption itself (one use) and expiring unused after `LINK_TTL_S`. Every change made with
the key names the person on the audit log, and revoking it signs out that person only.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import unquote

from gate.context import Context
from gate.errors import HeldByPlatform, NotFound, Unauthorized, ValidationFailed
from gate.store import keys
from gate.store.redis_client import text
from gate.store.scripts import Code
from gate.tenancy.apikeys import quote_person
from gate.tenancy.audit import Actor
from gate.tenancy.auth import WORKSPACE_ID, hash_key, new_key

LINK_TTL_S = 15 * 60
KEY_TTL_S = 8 * 3600  # a working day
KEY_TTL_MAX_S = 7 * 86400
_TOKEN = re.compile(r"^gsl_(ws_[0-9a-f]{16})_[A-Za-z0-9_-]{32}$")


@dataclass(frozen=True, slots=True)
class Redeemed:
    key: str
    key_id: str
    workspace_id: str
    role: str
    person: str
    expires_ms: int


def _link_key(workspace_id: str, token: str) -> str:
    return f"{keys.for_workspace(workspace_id).ws}:signin:{hash_key(token)}"


def check_person(person: str) -> str:
    person = person.strip()
    if not 1 <= len(person) <= 200 or any(c in person for c in "\r\n\t"):
        raise ValidationFailed(
            "person must name one person in 1 to 200 characters, like an email address",
            field="person",
        )
    return person


class SignIn:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def issue(
        self, workspace_id: str, person: str, role: str, key_ttl_s: int, actor: Actor
    ) -> tuple[str, int]:
        """A new link's token and the ms it expires at."""
        person = check_person(person)
        if role not in ("admin", "agent"):
            raise ValidationFailed("role must be admin or agent", field="role")
        if not 60 <= key_ttl_s <= KEY_TTL_MAX_S:
            raise ValidationFailed(
                f"key_ttl_s must be from 60 to {KEY_TTL_MAX_S} (a week): person keys are "
                "short-lived; send a new link when it runs out",
                field="key_ttl_s",
            )
        token = f"gsl_{workspace_id}_{secrets.token_urlsafe(24)}"
        k = keys.for_workspace(workspace_id)
        now = self.ctx.clock.now_ms()
        reply = await self.ctx.scripts.call(
            "signin_issue",
            [k.ws, _link_key(workspace_id, token), k.audit, k.wallet],
            [role, quote_person(person), key_ttl_s, now, LINK_TTL_S, *actor.args()],
        )
        if reply[0] == Code.NO_WORKSPACE:
            raise NotFound("no such workspace")
        if reply[0] == Code.HELD:
            raise HeldByPlatform(text(reply[1]), "")
        return token, now + LINK_TTL_S * 1000

    async def redeem(self, token: str, ip: str) -> Redeemed:
        """The link's key, once; a used, expired or made-up link is a 401."""
        match = _TOKEN.match(token)
        if match is None or not WORKSPACE_ID.match(match[1]):
            raise Unauthorized(_USED)
        workspace_id = match[1]
        key, key_hash, key_id = new_key(workspace_id)
        k = keys.for_workspace(workspace_id)
        reply = await self.ctx.scripts.call(
            "signin_redeem",
            [k.ws, k.keys, k.audit, _link_key(workspace_id, token), k.wallet],
            [key_hash, key_id, self.ctx.clock.now_ms(), ip, time.time_ns() // 1_000_000],
        )
        if reply[0] == Code.HELD:
            raise HeldByPlatform(text(reply[1]), "")
        if reply[0] != Code.OK:
            raise Unauthorized(_USED)
        return Redeemed(key, key_id, workspace_id, text(reply[1]), unquote(text(reply[2])),
                        int(reply[3]))  # fmt: skip


_USED = (
    "this sign-in link is not valid: it was used already, it expired (links last 15 minutes) "
    "or it was never made; ask your platform for a new one"
)

"""HTTP handlers of person sign-in: the platform makes a one-time link, the person's browser
redeems it for a short-lived key named for them (gate/tenancy/signin.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from gate.api.http import CTX, actor, decode, json, principal
from gate.api.schemas import Redeem, SigninLink
from gate.tenancy.auth import Role
from gate.tenancy.signin import LINK_TTL_S, SignIn


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def signin_link(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    workspace_id = who.workspace(request.match_info["workspace_id"])  # 404 for other tenants
    who.require(Role.platform)  # the platform vouches for who the person is
    body = await decode(request, SigninLink)
    token, expires_ms = await SignIn(request.app[CTX]).issue(
        workspace_id, body.person, body.role, body.key_ttl_s, actor(request, who)
    )
    base = (body.base_url or f"{request.scheme}://{request.host}").rstrip("/")
    return json(
        {
            "url": f"{base}/billing#signin={token}",
            "token": token,
            "person": body.person.strip(),
            "role": body.role,
            "expires_at": _iso(expires_ms),
            "expires_in_s": LINK_TTL_S,
            "key_ttl_s": body.key_ttl_s,
        },
        201,
    )


async def redeem(request: web.Request) -> web.StreamResponse:
    """No key needed: the link is the credential, good once."""
    body = await decode(request, Redeem)
    done = await SignIn(request.app[CTX]).redeem(body.token, request.remote or "")
    return json(
        {
            "key": done.key,
            "id": done.key_id,
            "workspace_id": done.workspace_id,
            "role": done.role,
            "person": done.person,
            "expires_at": _iso(done.expires_ms),
        },
        201,
    )

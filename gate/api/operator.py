"""HTTP handlers of the platform operator: find workspaces, suspend, resume, close them, and
list organizations with their offices. Every route here takes the platform key only."""

from __future__ import annotations

import orjson
from aiohttp import web

from gate.api.http import (
    AUTH,
    CALLS,
    CTX,
    NUMBERS,
    WORKSPACES,
    actor,
    decode,
    json,
    principal,
    query_int,
)
from gate.api.schemas import Close, Suspend
from gate.errors import NotFound
from gate.operator.holds import Holds
from gate.tenancy.auth import Role
from gate.tenancy.directory import MAX_PAGE, Directory

FILTERS = ("q", "organization_id", "number", "call_id", "customer", "state")


def _holds(request: web.Request) -> Holds:
    return Holds(request.app[CTX], request.app[CALLS], request.app[NUMBERS])


async def list_workspaces(request: web.Request) -> web.StreamResponse:
    await principal(request, Role.platform)
    known = {"limit", "cursor", *FILTERS}
    directory = Directory(request.app[CTX])
    filters = {n: v for n, v in request.query.items() if n not in ("limit", "cursor") and v}
    for name in request.query:
        if name not in known:
            filters[name] = request.query[name]  # refused by the directory, by name
    rows, cursor = await directory.page(
        filters, request.query.get("cursor") or None, query_int(request, "limit", 50, 1, MAX_PAGE)
    )
    return json({"data": [r.to_json() for r in rows], "next_cursor": cursor})


async def show_workspace(request: web.Request) -> web.StreamResponse:
    await principal(request, Role.platform)
    workspace_id = request.match_info["workspace_id"]
    ctx = request.app[CTX]
    rows = await Directory(ctx).summaries([workspace_id])
    if not rows:
        raise NotFound("no such workspace; find it with GET /v1/workspaces?q=...")
    workspace = await request.app[WORKSPACES].get(workspace_id)
    settings = workspace.to_json()
    settings.pop("webhook_secret")  # a secret: the operator has no need to read it
    statement = workspace.raw.get("closed_statement")
    key_records = await request.app[WORKSPACES].list_keys(workspace_id)
    return json(
        {
            **rows[0].to_json(),
            "settings": settings,
            "keys": [r.to_json() for r in key_records],
            "numbers": await request.app[NUMBERS].list(workspace_id),
            "statement": orjson.loads(statement) if statement else None,
        }
    )


async def suspend(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.platform)
    body = await decode(request, Suspend)
    workspace_id = who.workspace(request.match_info["workspace_id"])
    done = await _holds(request).suspend(
        workspace_id, body.reason, actor(request, who), body.live_calls
    )
    return json(done)


async def resume(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.platform)
    workspace_id = who.workspace(request.match_info["workspace_id"])
    return json(await _holds(request).resume(workspace_id, actor(request, who)))


async def close(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.platform)
    body = await decode(request, Close)
    workspace_id = who.workspace(request.match_info["workspace_id"])
    done = await _holds(request).close(workspace_id, body.reason, actor(request, who))
    request.app[AUTH].forget_workspace(workspace_id)  # this process at once; others by pub/sub
    return json(done)


async def list_organizations(request: web.Request) -> web.StreamResponse:
    await principal(request, Role.platform)
    rows, cursor = await Directory(request.app[CTX]).organizations(
        request.query.get("cursor") or None, query_int(request, "limit", 50, 1, MAX_PAGE)
    )
    return json({"data": rows, "next_cursor": cursor})

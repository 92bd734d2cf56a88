"""HTTP handlers of the audit log: a filtered page, and every matching entry as CSV.

An admin reads its own workspace's log, an org_admin any office's, the platform any
workspace's, or with no workspace_id the platform's own (rate-card reloads). No route
changes or deletes an entry.
"""

from __future__ import annotations

from aiohttp import web

from gate.api.http import CTX, csv_download, json, principal, query_int
from gate.errors import ValidationFailed
from gate.history import audit
from gate.tenancy.auth import Principal, Role

PARAMS = ("workspace_id", "limit", "cursor", *audit.FILTERS)


def _workspace(request: web.Request, who: Principal) -> str | None:
    unknown = sorted(set(request.query) - set(PARAMS))
    if unknown:
        raise ValidationFailed(
            f"unknown parameter {unknown[0]!r}; filter by {', '.join(audit.FILTERS)}",
            field=unknown[0],
        )
    wanted = request.query.get("workspace_id") or None
    if wanted is None and who.role is Role.platform:
        return None  # the platform's own log
    return who.workspace(wanted)  # another tenant's workspace is not found


async def audit_entries(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    workspace_id = _workspace(request, who)
    found, cursor = await audit.page(
        request.app[CTX],
        workspace_id,
        audit.filters(request.query),
        request.query.get("cursor") or None,
        query_int(request, "limit", 50, 1, 500),
    )
    return json({"data": [e.to_json() for e in found], "next_cursor": cursor})


async def audit_export(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    workspace_id = _workspace(request, who)
    chosen = audit.filters(request.query)
    ctx = request.app[CTX]
    response = await csv_download(request, "audit-log")
    await response.write(audit.csv_header().encode())
    chunk: list[audit.Entry] = []
    async for entry in audit.scan(ctx, workspace_id, chosen):
        chunk.append(entry)
        if len(chunk) >= 500:
            await response.write(audit.csv_lines(chunk).encode())
            chunk.clear()
    if chunk:
        await response.write(audit.csv_lines(chunk).encode())
    await response.write_eof()
    return response

"""HTTP handlers of organizations: create one, its offices' wallets, its usage export."""

from __future__ import annotations

from aiohttp import web

from gate.api.http import CTX, RATES, WALLET, WORKSPACES, csv_download, decode, json, principal
from gate.api.schemas import CreateOrganization
from gate.errors import NotFound
from gate.history import ledger, query
from gate.money import usd
from gate.tenancy.auth import Principal, Role
from gate.tenancy.organizations import Organizations


async def create_organization(request: web.Request) -> web.StreamResponse:
    await principal(request, Role.platform)
    body = await decode(request, CreateOrganization)
    org = await Organizations(request.app[CTX]).create(body.name)
    return json({"id": org.id, "name": org.name}, 201)


async def _organization(request: web.Request, who: Principal) -> str:
    """The organization of the path, if this key may see it; another one is not found."""
    organization_id = request.match_info["organization_id"]
    if who.role is not Role.platform and who.organization_id != organization_id:
        raise NotFound("no such organization")
    await Organizations(request.app[CTX]).get(organization_id)
    return organization_id


async def wallets(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    organization_id = await _organization(request, who)
    who.require(Role.org_admin)
    per_min = request.app[RATES].typical_per_min_micros()
    offices = []
    total = 0
    for workspace_id in await Organizations(request.app[CTX]).workspaces(organization_id):
        view = await request.app[WALLET].view(workspace_id)
        total += view.balance_micros
        offices.append(
            {"workspace_id": workspace_id, "name": view.workspace.name, **view.to_json(per_min)}
        )
    return json(
        {
            "organization_id": organization_id,
            "data": offices,
            "total_balance_usd": usd(total),
            "total_balance_micros": total,
        }
    )


async def export(request: web.Request) -> web.StreamResponse:
    """Every office's rows in one CSV with a workspace column, office after office."""
    who = await principal(request, Role.agent)
    organization_id = await _organization(request, who)
    who.require(Role.org_admin)
    query.check_params(request.query, query.FILTER_PARAMS)
    filters = query.filters(request.query)
    members = await Organizations(request.app[CTX]).workspaces(organization_id)
    if wanted := request.query.get("workspace_id"):
        if wanted not in members:
            raise NotFound("no such workspace in this organization")
        members = [wanted]
    ctx = request.app[CTX]
    response = await csv_download(request, "usage-history")
    await response.write(ledger.csv_header(with_workspace=True).encode())
    for workspace_id in members:
        office = (await request.app[WORKSPACES].get(workspace_id)).name
        chunk: list[str] = []
        async for row in ledger.scan(ctx.client, workspace_id, filters, archive=ctx.archive):
            chunk.extend(ledger.csv_lines([row], workspace_column=workspace_id, office=office))
            if len(chunk) >= 500:
                await response.write("".join(chunk).encode())
                chunk.clear()
        if chunk:
            await response.write("".join(chunk).encode())
    await response.write_eof()
    return response

"""HTTP handlers of spending alerts: a workspace's monthly budget and spike settings."""

from __future__ import annotations

from aiohttp import web

from gate.api.http import WORKSPACES, actor, decode, json, principal
from gate.api.schemas import SpendingAlerts
from gate.errors import ValidationFailed
from gate.history.alerts import AlertSettings
from gate.money import parse_usd
from gate.tenancy.auth import Role


async def get_alerts(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    workspace = await request.app[WORKSPACES].get(who.workspace(request.query.get("workspace_id")))
    return json(AlertSettings.from_record(workspace.raw).to_json())


async def put_alerts(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    workspace_id = who.workspace(request.query.get("workspace_id"))  # org_admin: any office
    body = await decode(request, SpendingAlerts)
    budget = None
    if body.monthly_budget_usd is not None:
        budget = parse_usd(body.monthly_budget_usd, "monthly_budget_usd")
        if budget <= 0:
            raise ValidationFailed(
                "monthly_budget_usd must be above 0; send null to turn budget alerts off",
                field="monthly_budget_usd",
            )
    fields: dict[str, str | int | None] = {
        "sa_budget_micros": budget,
        "sa_thresholds": ",".join(str(t) for t in sorted(set(body.thresholds_pct))),
        "sa_spike_factor": body.spike_factor,
    }
    await request.app[WORKSPACES].update(
        workspace_id, fields, actor(request, who), "wallet.spending_alerts_updated"
    )
    workspace = await request.app[WORKSPACES].get(workspace_id)
    return json(AlertSettings.from_record(workspace.raw).to_json())

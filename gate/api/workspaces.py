"""HTTP handlers of tenancy: workspaces, their keys and settings, operator adjustments."""

from __future__ import annotations

import time

from aiohttp import web
from msgspec import UNSET

from gate.api.http import (
    AUTH,
    CTX,
    OUTBOX,
    PLANS,
    WALLET,
    WORKSPACES,
    actor,
    decode,
    json,
    principal,
)
from gate.api.schemas import (
    Adjustment,
    CreateKey,
    CreateWorkspace,
    SetLimits,
    SetPlan,
    WorkspacePatch,
)
from gate.delivery.destinations import check_url
from gate.errors import Forbidden, NotFound, ValidationFailed
from gate.money import parse_usd, usd
from gate.tenancy.apikeys import KeyRecord
from gate.tenancy.auth import Role
from gate.tenancy.organizations import Organizations
from gate.tenancy.signin import check_person


async def create_workspace(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.platform)
    body = await decode(request, CreateWorkspace)
    orgs = Organizations(request.app[CTX])
    if body.organization_id is not None:
        await orgs.get(body.organization_id)  # 404 for an organization that does not exist
    created = await request.app[WORKSPACES].create(
        body.name, body.organization_id, actor(request, who)
    )
    if body.organization_id is not None:
        await orgs.add_workspace(body.organization_id, created.id)
    plans = request.app[PLANS]
    if (default_plan := plans.default_plan()) is not None:
        await plans.assign(created.id, default_plan, None)
    return json(
        {
            "id": created.id,
            "name": created.name,
            "key": created.key,
            "key_id": created.key_id,
            "role": "admin",
        },
        201,
    )


async def create_key(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    # Another tenant's workspace is not found, whatever the key's role: the tenant check
    # comes before the role check, so a 403 never confirms that a workspace id exists.
    workspace_id = who.workspace(request.match_info["workspace_id"])
    who.require(Role.admin)
    body = await decode(request, CreateKey)
    role = Role[body.role]
    who.require(role)  # nobody mints a key stronger than their own
    if role is Role.switch and who.role is not Role.platform:
        raise Forbidden(
            "switch keys are issued by the platform only (the switch is the platform's "
            "infrastructure, not the tenant's): create it with the platform key"
        )
    expires_ms = 0
    if body.expires_at is not None:
        expires_ms = int(body.expires_at.timestamp() * 1000)
        if expires_ms <= time.time() * 1000:
            raise ValidationFailed(
                "expires_at is in the past; give a future time or leave it out for a key "
                "that does not expire",
                field="expires_at",
            )
    person = check_person(body.person) if body.person is not None else ""
    key, key_id = await request.app[WORKSPACES].create_key(
        workspace_id, role, expires_ms, person=person, actor=actor(request, who)
    )
    record = KeyRecord(role.name, key_id, expires_ms, person).to_json()
    return json({"key": key, **record}, 201)


async def list_keys(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    workspace_id = who.workspace(request.match_info["workspace_id"])  # 404 for other tenants
    who.require(Role.admin)
    records = await request.app[WORKSPACES].list_keys(workspace_id)
    return json({"data": [r.to_json() for r in records]})


async def revoke_key(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    workspace_id = who.workspace(request.match_info["workspace_id"])  # 404 for other tenants
    who.require(Role.admin)
    key_id = request.match_info["key_id"]
    found = [r for r in await request.app[WORKSPACES].list_keys(workspace_id) if r.id == key_id]
    if not found:
        raise NotFound(
            f"no key {key_id[:40]!r} in this workspace; list them with GET "
            f"/v1/workspaces/{workspace_id}/keys"
        )
    # Nobody revokes a key stronger than their own; switch keys are the platform's.
    role = Role[found[0].role]
    who.require(Role.platform if role is Role.switch else role)
    await request.app[WORKSPACES].revoke_key(workspace_id, key_id, actor(request, who))
    request.app[AUTH].forget_workspace(workspace_id)  # this process at once; others by pub/sub
    return json({**found[0].to_json(), "revoked": True})


async def get_workspace(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    workspace = await request.app[WORKSPACES].get(who.workspace(request.query.get("id")))
    return json(workspace.to_json())


async def patch_workspace(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    workspace_id = who.workspace(request.query.get("id"))
    body = await decode(request, WorkspacePatch)
    fields: dict[str, str | int | None] = {}
    if body.name is not UNSET:
        if not body.name.strip():
            raise ValidationFailed("name must not be blank", field="name")
        fields["name"] = body.name
    if body.switch_webhook_url is not UNSET:
        if body.switch_webhook_url and not request.app[CTX].settings.webhook_allow_private:
            check_url(body.switch_webhook_url)
        fields["switch_webhook_url"] = body.switch_webhook_url
    if body.inbound_limit_threshold_usd is not UNSET:
        fields["inbound_limit_threshold_micros"] = (
            None
            if body.inbound_limit_threshold_usd is None
            else parse_usd(body.inbound_limit_threshold_usd, "inbound_limit_threshold_usd")
        )
    # Settings that move money have platform ceilings: grace time is billed past zero, and
    # concurrency multiplies it.
    ceilings = request.app[CTX].settings
    if body.inbound_grace_s is not UNSET:
        if body.inbound_grace_s is not None and body.inbound_grace_s > ceilings.inbound_grace_max_s:
            raise ValidationFailed(
                f"inbound_grace_s may be at most {ceilings.inbound_grace_max_s} seconds (the "
                "platform's GATE_INBOUND_GRACE_MAX_S); ask the platform operator for more",
                field="inbound_grace_s",
            )
        fields["inbound_grace_s"] = body.inbound_grace_s
    if body.max_concurrent_calls is not UNSET:
        if (
            body.max_concurrent_calls is not None
            and body.max_concurrent_calls > ceilings.max_concurrent_calls_max
        ):
            raise ValidationFailed(
                f"max_concurrent_calls may be at most {ceilings.max_concurrent_calls_max} (the "
                "platform's GATE_MAX_CONCURRENT_CALLS_MAX); ask the platform operator for more",
                field="max_concurrent_calls",
            )
        fields["max_concurrent_calls"] = body.max_concurrent_calls
    await request.app[WORKSPACES].update(workspace_id, fields, actor(request, who))
    if "switch_webhook_url" in fields:
        request.app[OUTBOX].url_changed(workspace_id)
    return json((await request.app[WORKSPACES].get(workspace_id)).to_json())


async def adjust(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    workspace_id = who.workspace(request.match_info["workspace_id"])  # 404 for other tenants
    who.require(Role.platform)  # a workspace's own keys can never credit it
    body = await decode(request, Adjustment)
    amount = parse_usd(body.amount_usd, "amount_usd", allow_negative=True)
    if amount == 0:
        raise ValidationFailed("amount_usd must not be zero", field="amount_usd")
    await request.app[WORKSPACES].get(workspace_id)
    row, created = await request.app[WALLET].adjust(
        workspace_id, amount, body.type, body.description, body.reference
    )
    return json(row.to_json(), 201 if created else 200)


async def set_plan(request: web.Request) -> web.StreamResponse:
    """PUT /v1/workspaces/{id}/plan: the platform assigns a plan; a new cycle starts now."""
    who = await principal(request, Role.agent)
    workspace_id = who.workspace(request.match_info["workspace_id"])  # 404 for other tenants
    who.require(Role.platform)  # a workspace never picks its own plan
    body = await decode(request, SetPlan)
    await request.app[WORKSPACES].get(workspace_id)
    plans = request.app[PLANS]
    await plans.assign(workspace_id, body.plan, body.cycle_anchor, actor(request, who))
    return json(await plans.buckets(workspace_id))


async def set_limits(request: web.Request) -> web.StreamResponse:
    """PUT /v1/workspaces/{id}/limits: the platform sets how much money a workspace may have
    at risk below zero (debt plus its live inbound calls' grace); call_start enforces it."""
    who = await principal(request, Role.agent)
    workspace_id = who.workspace(request.match_info["workspace_id"])  # 404 for other tenants
    who.require(Role.platform)  # a workspace never raises its own credit line
    body = await decode(request, SetLimits)
    limit = None
    if body.negative_limit_usd is not None:
        limit = parse_usd(body.negative_limit_usd, "negative_limit_usd")
    await request.app[WORKSPACES].update(workspace_id, {"negative_limit_micros": limit})
    effective = request.app[CTX].settings.negative_limit_micros if limit is None else limit
    return json(
        {
            "workspace_id": workspace_id,
            "negative_limit_usd": usd(effective),
            "negative_limit_micros": effective,
            "default": limit is None,
        }
    )

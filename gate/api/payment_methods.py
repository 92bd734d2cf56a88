"""HTTP handlers of the wallet's payment methods: add (verified), list, default, delete."""

from __future__ import annotations

from aiohttp import web

from gate.api.http import METHODS, actor, decode, json, principal
from gate.api.schemas import AddPaymentMethod, PaymentMethodPatch
from gate.tenancy.auth import Role


async def list_methods(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    return json(await request.app[METHODS].list(who.workspace(request.query.get("workspace_id"))))


async def add_method(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    body = await decode(request, AddPaymentMethod)
    record = await request.app[METHODS].add(
        who.workspace(), body.payment_method_id, body.default, actor(request, who)
    )
    return json(record, 201)


async def patch_method(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    await decode(request, PaymentMethodPatch)
    method_id = request.match_info["method_id"]
    return json(
        await request.app[METHODS].set_default(who.workspace(), method_id, actor(request, who))
    )


async def delete_method(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    await request.app[METHODS].delete(
        who.workspace(), request.match_info["method_id"], actor(request, who)
    )
    return web.Response(status=204)

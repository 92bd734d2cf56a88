"""HTTP handlers of number rental: rent, list, release (seed 003)."""

from __future__ import annotations

from aiohttp import web

from gate.api.call_schemas import RentNumber
from gate.api.http import NUMBERS, decode, json, principal
from gate.calls.rating import is_e164
from gate.errors import ValidationFailed
from gate.tenancy.auth import Role


async def rent(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    body = await decode(request, RentNumber)
    return json(await request.app[NUMBERS].rent(who.workspace(), body.number), 201)


async def list_numbers(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    numbers = await request.app[NUMBERS].list(who.workspace())
    return json({"data": numbers, "count": len(numbers)})


async def release(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.admin)
    number = request.match_info["number"]
    if not is_e164(number):
        raise ValidationFailed("number must be E.164, like +14155550123 (URL-encode the +)")
    return json(await request.app[NUMBERS].release(who.workspace(), number))

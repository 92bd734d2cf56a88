"""HTTP handlers of the switch's call webhooks: start, answer, heartbeat, end, live view."""

from __future__ import annotations

import re

from aiohttp import web

from gate.api.call_schemas import EndCall, Heartbeat, StartCall
from gate.api.http import CALLS, RATES, decode, json, principal, query_int
from gate.calls.service import RateCardError, StartParams
from gate.errors import ValidationFailed
from gate.tenancy.auth import Role

_CALL_ID = re.compile(r"^[A-Za-z0-9._:@+-]{1,128}$")  # as call_schemas.CallId


def _call_id(request: web.Request) -> str:
    call_id = request.match_info["call_id"]
    if not _CALL_ID.match(call_id):
        raise ValidationFailed("call_id must be 1 to 128 letters, digits or ._:@+-")
    return call_id


async def start(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.switch)
    body = await decode(request, StartCall)
    new, answer = await request.app[CALLS].start(
        who.workspace(),
        StartParams(
            body.call_id,
            body.direction,
            body.from_,
            body.to,
            body.service,
            body.user,
            body.group,
            body.number_type,
            body.answered,
        ),
    )
    return json(answer, 201 if new else 200)


async def answer(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.switch)
    return json(await request.app[CALLS].answer(who.workspace(), _call_id(request)))


async def heartbeat(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.switch)
    call_id = _call_id(request)
    body = await decode(request, Heartbeat)
    return json(
        await request.app[CALLS].heartbeat(who.workspace(), call_id, body.elapsed_s, body.seq)
    )


async def end(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.switch)
    call_id = _call_id(request)
    body = await decode(request, EndCall)
    fallback = StartParams(
        call_id,
        body.direction,
        body.from_ or "",
        body.to or "",
        body.service,
        body.user,
        body.group,
        body.number_type,
        True,
    )
    _, result = await request.app[CALLS].end(
        who.workspace(), call_id, body.duration_s, body.hangup_cause, fallback
    )
    return json(result, 200)


async def get_call(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    return json(await request.app[CALLS].get(who.workspace(), _call_id(request)))


async def list_calls(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    state = request.query.get("state", "live")
    if state != "live":
        raise ValidationFailed("state must be live (ended calls are in the ledger)", field="state")
    limit = query_int(request, "limit", 1000, 1, 10_000)
    calls = await request.app[CALLS].live(who.workspace(), limit)
    return json({"data": calls, "count": len(calls)})


async def reload_rates(request: web.Request) -> web.StreamResponse:
    await principal(request, Role.platform)
    book = request.app[RATES]
    try:
        card = book.reload()
    except RateCardError as err:
        raise ValidationFailed(f"rate card not reloaded, the old one stays: {err}") from err
    return json({"reloaded": True, "source": book.source, "rates": len(card.rates)})

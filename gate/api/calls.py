"""HTTP handlers of the switch's call webhooks: start, answer, heartbeat, end, live view."""

from __future__ import annotations

import asyncio
import re
import time

import orjson
from aiohttp import web

from gate import metrics
from gate.api.call_schemas import (
    CALL_ID_PATTERN,
    Charge,
    EndCall,
    Heartbeat,
    StartCall,
    SyncCalls,
)
from gate.api.http import CALLS, CHARGES, CTX, RATES, actor, decode, json, principal, query_int
from gate.calls.numbers import to_e164
from gate.calls.owners import CallOwners
from gate.calls.service import RateCardError, StartParams
from gate.errors import GateTimeout, ValidationFailed
from gate.store import keys
from gate.store.redis_client import text
from gate.tenancy.auth import Principal, Role
from gate.wallet.charges import ChargeRequest

_CALL_ID = re.compile(CALL_ID_PATTERN)


def _call_id(request: web.Request) -> str:
    """The path's call id, percent-decoded (a SIP Call-ID's '/' comes as %2F)."""
    call_id = request.match_info["call_id"]
    if not _CALL_ID.match(call_id):
        raise ValidationFailed(
            "call_id must be 1 to 256 printable ASCII characters without spaces (any SIP "
            "Call-ID), percent-encoded in the URL",
            field="call_id",
        )
    return call_id


def _owners(request: web.Request) -> CallOwners:
    ctx = request.app[CTX]
    return CallOwners(ctx.client, ctx.settings)


async def _call_workspace(
    request: web.Request, who: Principal, call_id: str, named: str | None = None
) -> str:
    """The workspace of a call: the key's own, or for the service-wide switch key the one
    its start named (found by the call id); an unseen call's end names it itself."""
    if not who.every_workspace:
        return who.workspace(named)
    owner = await _owners(request).find(call_id)
    if owner is not None:
        return owner
    return who.workspace(named)  # none named: 400 "must name the workspace"


def _commit_margin_ms(timeout_ms: int) -> int:
    """How much earlier than the switch's deadline the script stops committing: the time its
    reply needs to travel back, so an answer that arrives late was also refused."""
    return min(50, timeout_ms // 5)


async def start(request: web.Request) -> web.StreamResponse:
    """A call start, answered within the switch's deadline or 503 gate_timeout, never later.

    The deadline covers everything (auth may need Redis too); the script itself refuses to
    commit past it, so a start that waited out a paused Redis is not a phantom call.
    """
    arrival = time.time_ns() // 1_000_000
    timeout_ms = request.app[CTX].settings.start_timeout_ms
    started = asyncio.get_running_loop().time()
    try:  # auth may need Redis too: it spends the same budget
        async with asyncio.timeout(timeout_ms / 1000) as deadline:
            who = await principal(request, Role.switch)
            body = await decode(request, StartCall)
            if body.timeout_ms is not None:
                timeout_ms = body.timeout_ms
                deadline.reschedule(started + timeout_ms / 1000)
            workspace_id = who.workspace(body.workspace_id)
            from_, to = to_e164(body.from_, "from"), to_e164(body.to, "to")
            if who.every_workspace:
                await _owners(request).claim(body.call_id, workspace_id)
    except TimeoutError:
        metrics.START_TIMEOUTS.inc()
        raise GateTimeout(
            f"the call start was not decided within {timeout_ms} ms and will not be committed; "
            "fail the call by direction (outbound closed, inbound may open)",
            timeout_ms=timeout_ms,
        ) from None
    new, answer = await request.app[CALLS].start(
        workspace_id,
        StartParams(
            body.call_id,
            body.direction,
            from_,
            to,
            body.service,
            body.user,
            body.group,
            body.number_type,
            body.answered,
            timeout_ms,
            body.heartbeat_s,
            body.node,
        ),
        deadline_ms=arrival + timeout_ms - _commit_margin_ms(timeout_ms),
        expires_at=started + timeout_ms / 1000,
    )
    return json(answer, 201 if new else 200)


async def sync(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.switch)
    body = await decode(request, SyncCalls)
    calls = request.app[CALLS]
    if not who.every_workspace or body.workspace_id is not None:
        return json(await calls.sync(who.workspace(body.workspace_id), body.call_ids, body.node))
    # The service-wide switch lists the calls of all its tenants: sync each workspace that
    # has live calls against the whole list (a call of another workspace is simply absent).
    client = request.app[CTX].client
    ended: list[object] = []
    listed = set(body.call_ids)
    async for member in client.sscan_iter(keys.WORKSPACES, count=500):
        workspace_id = text(member)
        if not await client.hlen(keys.for_workspace(workspace_id).live):
            continue
        one = await calls.sync(workspace_id, body.call_ids, body.node)
        ended += one["ended"]
        listed -= set(body.call_ids) - set(one["not_live"])
    return json({"ended": ended, "not_live": sorted(listed), "listed": len(set(body.call_ids))})


async def answer(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.switch)
    call_id = _call_id(request)
    workspace_id = await _call_workspace(request, who, call_id)
    return json(await request.app[CALLS].answer(workspace_id, call_id))


async def heartbeat(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.switch)
    call_id = _call_id(request)
    body = await decode(request, Heartbeat)
    workspace_id = await _call_workspace(request, who, call_id)
    return json(await request.app[CALLS].heartbeat(workspace_id, call_id, body.elapsed_s, body.seq))


async def end(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.switch)
    call_id = _call_id(request)
    body = await decode(request, EndCall)
    workspace_id = await _call_workspace(request, who, call_id, body.workspace_id)
    fallback = StartParams(
        call_id,
        body.direction,
        to_e164(body.from_, "from") if body.from_ else "",
        to_e164(body.to, "to") if body.to else "",
        body.service,
        body.user,
        body.group,
        body.number_type,
        True,
    )
    _, result = await request.app[CALLS].end(
        workspace_id, call_id, body.duration_s, body.hangup_cause, fallback, body.facts()
    )
    return json(result, 200)


async def get_call(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    call_id = _call_id(request)
    workspace_id = await _call_workspace(request, who, call_id)
    return json(await request.app[CALLS].get(workspace_id, call_id))


async def list_calls(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.agent)
    state = request.query.get("state", "live")
    if state != "live":
        raise ValidationFailed("state must be live (ended calls are in the ledger)", field="state")
    limit = query_int(request, "limit", 1000, 1, 10_000)
    calls = await request.app[CALLS].live(who.workspace(), limit)
    return json({"data": calls, "count": len(calls)})


async def reload_rates(request: web.Request) -> web.StreamResponse:
    who = await principal(request, Role.platform)
    book = request.app[RATES]
    before = {"source": book.source, "rates": len(book.card.rates)}
    try:
        card = book.reload()
    except RateCardError as err:
        raise ValidationFailed(f"rate card not reloaded, the old one stays: {err}") from err
    ctx = request.app[CTX]
    after = {"source": book.source, "rates": len(card.rates)}
    await ctx.scripts.call(
        "audit_append",
        [keys.PLATFORM_AUDIT],
        [ctx.clock.now_ms(), "rates.reloaded", *actor(request, who).args(), "rate_card",
         orjson.dumps(before).decode(), orjson.dumps(after).decode()],
    )  # fmt: skip
    return json({"reloaded": True, "source": book.source, "rates": len(card.rates)})


async def charge(request: web.Request) -> web.StreamResponse:
    """One-off usage billed by the switch (SMS, MMS, fax, chat): 201 new, 200 a repeat."""
    who = await principal(request, Role.switch)
    body = await decode(request, Charge)
    row, new = await request.app[CHARGES].charge(
        who.workspace(body.workspace_id),
        ChargeRequest(
            charge_id=body.charge_id,
            service=body.service,
            text=body.text,
            segments=body.segments,
            pages=body.pages,
            messages=body.messages,
            direction=body.direction,
            from_=body.from_,
            to=body.to,
            user=body.user,
            group=body.group,
            message_id=body.message_id,
            status=body.status,
        ),
    )
    return json(row.to_json(), 201 if new else 200)

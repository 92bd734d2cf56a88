"""What the route table cannot say by itself, for the OpenAPI document: query parameters,
headers, every status a route answers, path patterns and the error body.

`complete(route, op)` fills one operation of the document routes.py generates. Query
parameters are listed by handler name; tests/test_openapi.py checks them against the
names each handler really reads, so this table cannot drift from the code.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gate.api.call_schemas import CallId
from gate.errors import ValidationFailed
from gate.tenancy.auth import WORKSPACE_ID


def _param(name: str, where: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


_WORKSPACE = _param(
    "workspace_id",
    "query",
    "the workspace to act on; required with the platform key, ignored with a workspace's own",
    pattern=WORKSPACE_ID.pattern,
)
_LEDGER_FILTERS = [
    _param("type", "query", "ledger row type: recharge, call, ai_agent, sms, mms, fax, chat, "
           "number_rental, adjustment, refund, dispute, plan_cycle"),
    _param("service", "query", "the seeds' Usage History services: calling or voice (call rows), "
           "ai_agent, messaging (sms, mms, chat), fax, numbers (number_rental), credits "
           "(recharge, adjustment, refund, dispute)"),
    _param("user", "query", "only rows of this user"),
    _param("group", "query", "only rows of this group"),
    _param("source", "query", "only rows drawn from this wallet source (credit bucket)"),
    _param("month", "query", "a calendar month, like 2026-11 (not with from/to)",
           pattern=r"^\d{4}-\d{2}$"),
    _param("from", "query", "ISO 8601 date or time, inclusive"),
    _param("to", "query", "ISO 8601 date or time; a bare date includes that whole day"),
    _param("min_amount_usd", "query", "smallest signed amount, USD"),
    _param("max_amount_usd", "query", "largest signed amount, USD"),
]  # fmt: skip
_PAGE = [
    {**_param("limit", "query", "rows per page (1-200, default 50)"),
     "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
    _param("cursor", "query", "next_cursor of the previous page"),
]  # fmt: skip

_AUDIT_FILTERS = [
    _param("action", "query", "an action, or a prefix ending in '.' (key.)"),
    _param("key_id", "query", "changes made with this key"),
    _param("person", "query", "changes made by this person"),
    _param("from", "query", "ISO 8601 date or time, inclusive"),
    _param("to", "query", "ISO 8601 date or time; a bare date includes that whole day"),
]

QUERY: dict[str, list[dict[str, Any]]] = {
    "get_wallet": [_WORKSPACE],
    "list_methods": [_WORKSPACE],
    "topup": [_WORKSPACE],
    "refund_topup": [_WORKSPACE],
    "patch_settings": [_WORKSPACE],
    "buckets": [_WORKSPACE],
    "get_alerts": [_WORKSPACE],
    "put_alerts": [_WORKSPACE],
    "transactions": [_WORKSPACE, *_PAGE, *_LEDGER_FILTERS],
    "export": [_WORKSPACE, *_LEDGER_FILTERS],
    "transaction": [_WORKSPACE],
    "stream": [
        _WORKSPACE,
        _param("last_event_id", "query", "resume after this event id (as Last-Event-ID)"),
        _param("from", "query", "0: replay every retained event", enum=["0"]),
    ],
    "list_calls": [
        _param("state", "query", "only live calls are listed", enum=["live"]),
        {**_param("limit", "query", "most calls listed (1-10000, default 1000)"),
         "schema": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 1000}},
    ],
    "usage_summary": [
        _WORKSPACE,
        _param("month", "query", "a calendar month, like 2026-11 (default: this month)",
               pattern=r"^\d{4}-\d{2}$"),
        _param("format", "query", "json (default) or csv", enum=["json", "csv"]),
    ],
    "get_workspace": [_param("id", "query", "the workspace, for the platform key",
                             pattern=WORKSPACE_ID.pattern)],
    "patch_workspace": [_param("id", "query", "the workspace, for the platform key",
                               pattern=WORKSPACE_ID.pattern)],
    "list_workspaces": [
        *_PAGE,
        _param("q", "query", "a workspace id, or the start of a name (any case)"),
        _param("organization_id", "query", "the offices of this organization"),
        _param("number", "query", "the workspace renting this E.164 number"),
        _param("call_id", "query", "the workspace of this call (service-wide switch key's "
               "calls, and every call once archived)"),
        _param("customer", "query", "the workspace of this payment provider customer"),
        _param("state", "query", "the platform's hold",
               enum=["active", "suspended", "closing", "closed"]),
    ],
    "list_organizations": _PAGE,
    "audit_export": [
        _param("workspace_id", "query", "as GET /v1/audit", pattern=WORKSPACE_ID.pattern),
        *_AUDIT_FILTERS,
    ],
    "audit_entries": [
        _param("workspace_id", "query", "the workspace (org_admin: an office; platform: any, "
               "none for the platform's own log)", pattern=WORKSPACE_ID.pattern),
        {**_param("limit", "query", "entries per page (1-500, default 50)"),
         "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
        _param("cursor", "query", "next_cursor of the previous page (a short page may have "
               "one: follow it until it is null)"),
        *_AUDIT_FILTERS,
    ],
}  # fmt: skip

HEADERS: dict[str, list[dict[str, Any]]] = {
    "get_wallet": [_param("If-None-Match", "header", "the ETag of a previous answer: 304")],
    "topup": [{**_param("Idempotency-Key", "header", "the same key returns the first answer"),
               "required": True}],
    "refund_topup": [_param("Idempotency-Key", "header", "the same key returns the first answer")],
    "stream": [_param("Last-Event-ID", "header", "resume after this event id")],
    "stripe_webhook": [{**_param("Stripe-Signature", "header", "Stripe's signature"),
                        "required": True}],
}  # fmt: skip

_CALL_ID_PATTERN: str = typing.get_args(CallId)[1].pattern  # Annotated[str, Meta(pattern=...)]
PATH_PATTERNS = {
    "workspace_id": WORKSPACE_ID.pattern,
    "call_id": _CALL_ID_PATTERN,
    "key_id": r"^key_[0-9a-f]{12}$",
    "number": r"^\+[1-9][0-9]{1,14}$",
    "name": r"^[A-Za-z0-9._-]+$",
    "method_id": r"^[A-Za-z0-9._:@+-]+$",
    "organization_id": r"^org_[0-9a-f]{16}$",
    "topup_id": r"^\d{1,16}-\d{1,16}$",
    "row_id": r"^\d{1,16}-\d{1,16}$",
}

# Statuses beyond the 200 and the errors every route shares (see `complete`).
STATUSES: dict[str, dict[str, str]] = {
    "create_workspace": {"201": "created, with its admin key (shown once)"},
    "create_key": {"201": "created (the key is shown once)"},
    "adjust": {"201": "the ledger row", "402": "a debit beyond the available money"},
    "revoke_key": {},
    "get_wallet": {"304": "not modified since the ETag in If-None-Match"},
    "topup": {"201": "credited", "402": "the card was declined",
              "409": "Idempotency-Key reused with another body, or still in progress"},
    "patch_settings": {"409": "auto-recharge needs a payment method on file"},
    "refund_topup": {"201": "the refund row", "402": "more than the unspent balance, or the "
                     "provider refused", "404": "no such ledger row",
                     "409": "another refund of the workspace is running, or the key is reused"},
    "stream": {"200": "text/event-stream", "429": "too many streams open for the key or "
               "workspace (too_many_streams)"},
    "start": {"201": "allowed: the call may start", "200": "a repeated start: the first answer",
              "402": "insufficient_balance or workspace_suspended", "409": "the call ended already",
              "422": "no rate for this number", "429": "concurrency_limit"},
    "answer": {"409": "not in a state to be answered"},
    "heartbeat": {"409": "the call is not live"},
    "end": {},
    "export": {"200": "text/csv"},
    "usage_summary": {"200": "JSON, or text/csv with format=csv"},
    "rent": {"201": "rented; the first month is charged now", "402": "insufficient_balance",
             "409": "the number is rented already"},
    "charge": {"201": "the ledger row", "200": "a repeated charge_id: the first row",
               "402": "insufficient_balance", "409": "the charge_id was used with another body"},
    "release": {},
    "sync": {},
    "add_method": {"201": "verified (a refunded $0.50 charge) and kept",
                   "402": "the card was declined"},
    "delete_method": {"204": "deleted", "409": "the last method while auto-recharge is on"},
    "stripe_webhook": {"400": "a bad or old Stripe-Signature",
                       "404": "Stripe is not this Gate's payment provider"},
    "create_organization": {"201": "created"},
    "suspend": {"409": "the workspace is suspended, closing or closed already (its state)"},
    "resume": {"409": "the workspace is not suspended (its state)"},
    "close": {"409": "closed already, or a payment is in flight (run it again shortly)"},
    "billing": {"200": "text/html"},
    "audit_export": {"200": "text/csv"},
    "signin_link": {"201": "the link (send it to the person; it works once, for 15 minutes)"},
    "redeem": {"201": "the person's key (shown once)",
               "401": "the link was used, expired or never made"},
    "asset": {"200": "a script, style or page of the billing page"},
}  # fmt: skip

_NO_REDIS = {"healthz", "openapi", "prometheus", "billing", "asset"}


def complete(method: str, path: str, handler: str, has_body: bool, role: str | None,
             op: dict[str, Any]) -> None:  # fmt: skip
    """Add query and header parameters, path patterns and every status to one operation."""
    for param in op.get("parameters", []):
        pattern = PATH_PATTERNS.get(param["name"])
        if param["in"] == "path" and pattern:
            param["schema"] = {"type": "string", "pattern": pattern}
    extra = QUERY.get(handler, []) + HEADERS.get(handler, [])
    if extra:
        op["parameters"] = op.get("parameters", []) + extra
    error = {"$ref": "#/components/responses/Error"}
    responses: dict[str, Any] = {"200": {"description": "OK"}}
    # With a role: the platform key must name the workspace, else 400.
    if has_body or extra or "{" in path or role:
        responses["400"] = error
    if role:
        responses["401"] = error
        responses["403"] = error
    # 404: a path id, or a workspace named by a platform key or by a service switch key
    # (`workspace_id` in the body), may not exist.
    if "{" in path or role in ("platform", "switch") or handler in QUERY:
        responses["404"] = error
    if has_body:
        responses["413"] = error
    if method in {"POST", "PUT", "PATCH", "DELETE"} and role is not None:
        # rate_limited, with Retry-After: an admin or agent key is limited on any route it
        # calls (the platform and switch keys never are)
        responses["429"] = error
    for status, description in STATUSES.get(handler, {}).items():
        if status.startswith(("4", "5")):
            responses[status] = {**error, "description": description}
        else:
            responses[status] = {"description": description}
    own = STATUSES.get(handler, {})
    if any(s in own for s in ("201", "204")) and "200" not in own:
        responses.pop("200", None)
    if handler not in _NO_REDIS:
        responses["503"] = error  # gate_unavailable: Redis away
    op["responses"] = dict(sorted(responses.items()))


def components() -> dict[str, Any]:
    """The Error schema and response every error status refers to."""
    return {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string", "examples": ["insufficient_balance"]},
                            "message": {"type": "string"},
                            "field": {"type": "string"},
                        },
                        "additionalProperties": True,
                    }
                },
            }
        },
        "responses": {
            "Error": {
                "description": 'error: {"error": {"code", "message", ...details}}',
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        },
    }


def unique_operation_ids(paths: dict[str, dict[str, Any]]) -> None:
    """Two handlers of the same name in different modules: keep operationIds unique."""
    seen: set[str] = set()
    for path, ops in paths.items():
        for method, op in ops.items():
            if op["operationId"] in seen:
                tail = "_".join(p for p in path.split("/") if p and not p.startswith("{"))
                op["operationId"] = f"{op['operationId']}_{method}_{tail}"
            seen.add(op["operationId"])


def strict_query(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler, refusing a `workspace_id` query parameter it would not read: a platform
    or service-wide switch key that names a workspace on a route acting on another (or on
    every one) must not be answered as if it had been obeyed (issue 21). Routes that read
    it are returned as they are, so the call path pays nothing."""
    if any(p["name"] == "workspace_id" for p in QUERY.get(handler.__name__, [])):
        return handler

    async def refusing(request: web.Request) -> web.StreamResponse:
        if "workspace_id" in request.query_string and "workspace_id" in request.query:
            raise ValidationFailed(
                f"{request.method} {request.path} does not take workspace_id: it acts on the "
                "workspace of the key (or on the one named in the path or body); drop the "
                "parameter",
                field="workspace_id",
            )
        return await handler(request)

    refusing.__name__ = handler.__name__
    return refusing

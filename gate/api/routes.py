"""The whole API on one screen: every route, its handler, body schema and minimum role."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import msgspec
from aiohttp import web

from gate import __version__
from gate.api import alerts as api_alerts
from gate.api import audit as api_audit
from gate.api import calls as api_calls
from gate.api import events as api_events
from gate.api import numbers as api_numbers
from gate.api import openapi, schemas
from gate.api import operator as api_operator
from gate.api import ops as api_ops
from gate.api import organizations as api_orgs
from gate.api import payment_methods as api_methods
from gate.api import providers as api_providers
from gate.api import refunds as api_refunds
from gate.api import signin as api_signin
from gate.api import wallet as api_wallet
from gate.api import workspaces as api_workspaces
from gate.api.call_schemas import Charge, EndCall, Heartbeat, RentNumber, StartCall, SyncCalls
from gate.api.http import Handler
from gate.web import pages as web_pages


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    role: str | None = None
    body: type[msgspec.Struct] | None = None


ROUTES = [
    Route("GET", "/healthz", api_ops.healthz, "Process alive"),
    Route("GET", "/readyz", api_ops.readyz, "Redis reachable and scripts loaded"),
    Route("GET", "/metrics", api_ops.prometheus, "Prometheus metrics"),
    Route("GET", "/openapi.json", api_ops.openapi, "This document"),
    Route("POST", "/v1/workspaces", api_workspaces.create_workspace, "Create a workspace",
          "platform", schemas.CreateWorkspace),
    Route("POST", "/v1/workspaces/{workspace_id}/keys", api_workspaces.create_key,
          "Create an API key", "admin", schemas.CreateKey),
    Route("GET", "/v1/workspaces/{workspace_id}/keys", api_workspaces.list_keys,
          "List the workspace's API keys (never their secrets)", "admin"),
    Route("DELETE", "/v1/workspaces/{workspace_id}/keys/{key_id}", api_workspaces.revoke_key,
          "Revoke an API key: refused by every gate process at once", "admin"),
    Route("POST", "/v1/workspaces/{workspace_id}/adjustments", api_workspaces.adjust,
          "Credit or debit a wallet by hand", "platform", schemas.Adjustment),
    Route("PUT", "/v1/workspaces/{workspace_id}/plan", api_workspaces.set_plan,
          "Assign a plan of the rate card and its cycle anchor day", "platform",
          schemas.SetPlan),
    Route("PUT", "/v1/workspaces/{workspace_id}/limits", api_workspaces.set_limits,
          "Set the workspace's negative limit (money at risk below zero)", "platform",
          schemas.SetLimits),
    Route("GET", "/v1/wallet/buckets", api_wallet.buckets,
          "Plan allowances, commitments and universal credits: committed, spent, available",
          "agent"),
    Route("GET", "/v1/workspace", api_workspaces.get_workspace, "Workspace settings", "admin"),
    Route("PATCH", "/v1/workspace", api_workspaces.patch_workspace,
          "Change workspace settings", "admin", schemas.WorkspacePatch),
    Route("GET", "/v1/wallet", api_wallet.get_wallet, "Balance and wallet settings", "agent"),
    Route("POST", "/v1/wallet/topup", api_wallet.topup, "Add funds", "admin", schemas.Topup),
    Route("PATCH", "/v1/wallet/settings", api_wallet.patch_settings,
          "Auto-recharge and low-balance alert", "admin", schemas.WalletSettings),
    Route("GET", "/v1/wallet/payment_methods", api_methods.list_methods,
          "Payment methods on file and the default", "agent"),
    Route("POST", "/v1/wallet/payment_methods", api_methods.add_method,
          "Add a payment method after a verification charge", "admin",
          schemas.AddPaymentMethod),
    Route("PATCH", "/v1/wallet/payment_methods/{method_id}", api_methods.patch_method,
          "Make a payment method the default", "admin", schemas.PaymentMethodPatch),
    Route("DELETE", "/v1/wallet/payment_methods/{method_id}", api_methods.delete_method,
          "Delete a payment method", "admin"),
    Route("POST", "/v1/wallet/topups/{topup_id}/refund", api_refunds.refund_topup,
          "Refund a card top-up to the card (platform; admin within the window)", "admin",
          schemas.RefundTopup),
    Route("POST", "/v1/providers/stripe/webhook", api_providers.stripe_webhook,
          "Stripe events, verified by Stripe-Signature"),
    Route("GET", "/v1/wallet/transactions", api_wallet.transactions,
          "Ledger rows, newest first", "agent"),
    Route("GET", "/v1/wallet/transactions/{row_id}", api_wallet.transaction,
          "One ledger row with its details (also once archived)", "agent"),
    Route("GET", "/v1/usage/export", api_wallet.export, "CSV of all matching rows", "admin"),
    Route("GET", "/v1/usage/summary", api_wallet.usage_summary,
          "The month's spend per service, counts, top users and groups", "agent"),
    Route("GET", "/v1/events", api_events.stream, "Server-Sent Events, resumable", "agent"),
    Route("POST", "/v1/calls", api_calls.start, "A call wants to start: allow or refuse",
          "switch", StartCall),
    Route("POST", "/v1/numbers", api_numbers.rent,
          "Rent a number: the first month is charged now", "admin", RentNumber),
    Route("GET", "/v1/numbers", api_numbers.list_numbers, "The rented numbers", "agent"),
    Route("DELETE", "/v1/numbers/{number}", api_numbers.release, "Stop renting a number",
          "admin"),
    Route("POST", "/v1/charges", api_calls.charge,
          "One-off usage: SMS, MMS, fax, chat; idempotent by charge_id", "switch", Charge),
    Route("POST", "/v1/calls/sync", api_calls.sync,
          "The calls the switch has up: end the others as lost", "switch", SyncCalls),
    Route("POST", "/v1/calls/{call_id}/answer", api_calls.answer, "Billing starts now",
          "switch"),
    Route("POST", "/v1/calls/{call_id}/heartbeat", api_calls.heartbeat,
          "Interim update from the switch", "switch", Heartbeat),
    Route("POST", "/v1/calls/{call_id}/end", api_calls.end, "Bill the whole call", "switch",
          EndCall),
    Route("GET", "/v1/calls/{call_id}", api_calls.get_call, "One call, live or ended", "agent"),
    Route("GET", "/v1/calls", api_calls.list_calls, "Live calls (?state=live)", "agent"),
    Route("POST", "/v1/admin/rates/reload", api_calls.reload_rates,
          "Reload the rate card; live calls keep their rate", "platform"),
    Route("GET", "/v1/wallet/spending-alerts", api_alerts.get_alerts,
          "Monthly budget thresholds and the spike alert", "admin"),
    Route("PUT", "/v1/wallet/spending-alerts", api_alerts.put_alerts,
          "Set the monthly budget thresholds and the spike alert", "admin",
          schemas.SpendingAlerts),
    Route("POST", "/v1/organizations", api_orgs.create_organization,
          "Create an organization (a company of workspaces)", "platform",
          schemas.CreateOrganization),
    Route("GET", "/v1/organizations/{organization_id}/wallets", api_orgs.wallets,
          "Every office's wallet", "org_admin"),
    Route("GET", "/v1/organizations/{organization_id}/usage/export", api_orgs.export,
          "CSV of every office's matching rows, with a workspace column", "org_admin"),
    Route("GET", "/v1/workspaces", api_operator.list_workspaces,
          "Find workspaces: by name or id (q), organization, number, call, customer, state",
          "platform"),
    Route("GET", "/v1/workspaces/{workspace_id}", api_operator.show_workspace,
          "One workspace as the operator sees it: money, state, keys, numbers, statement",
          "platform"),
    Route("POST", "/v1/workspaces/{workspace_id}/suspend", api_operator.suspend,
          "Suspend a workspace: starts and charges refused, reads go on", "platform",
          schemas.Suspend),
    Route("POST", "/v1/workspaces/{workspace_id}/resume", api_operator.resume,
          "Lift the platform's suspension", "platform"),
    Route("POST", "/v1/workspaces/{workspace_id}/close", api_operator.close,
          "Close a workspace: calls ended, numbers released, balance refunded, keys revoked",
          "platform", schemas.Close),
    Route("GET", "/v1/organizations", api_operator.list_organizations,
          "Organizations with their offices", "platform"),
    Route("GET", "/v1/audit", api_audit.audit_entries,
          "The audit log: who changed what, when, from where, before and after", "admin"),
    Route("GET", "/v1/audit/export", api_audit.audit_export, "CSV of every matching audit entry",
          "admin"),
    Route("POST", "/v1/workspaces/{workspace_id}/signin-links", api_signin.signin_link,
          "A one-time sign-in link for one person: it mints a short-lived key named for them",
          "platform", schemas.SigninLink),
    Route("POST", "/v1/signin", api_signin.redeem,
          "Redeem a sign-in link (once) for a person's short-lived key; no key needed", None,
          schemas.Redeem),
    Route("GET", "/billing", web_pages.billing, "The billing page (sign in with a key)"),
    Route("GET", "/billing/assets/{name}", web_pages.asset, "A script or style of the page"),
]  # fmt: skip


# aiohttp's default {name} pattern refuses '{' and '}', which SIP Call-IDs may hold; the
# call id may be any percent-encoded segment ('/' comes as %2F, decoded in match_info).
_PATTERNS = {"{call_id}": "{call_id:[^/]+}"}


def _aiohttp_path(path: str) -> str:
    for name, pattern in _PATTERNS.items():
        path = path.replace(name, pattern)
    return path


def add_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.route(r.method, _aiohttp_path(r.path), openapi.strict_query(r.handler))
            for r in ROUTES
        ]
    )


@cache
def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 generated from the route table and the same Structs that validate bodies."""
    bodies = [r.body for r in ROUTES if r.body is not None]
    refs, components = msgspec.json.schema_components(
        bodies, ref_template="#/components/schemas/{name}"
    )
    ref_of = dict(zip(bodies, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    error = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for r in ROUTES:
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": r.handler.__name__,
            "responses": {"200": {"description": "OK"}, "4XX": error},
        }
        if r.role:
            op["security"] = [{"bearer": []}]
            op["description"] = (
                "Needs the platform's `switch` key (no other role)."
                if r.role == "switch"
                else f"Needs a key of role `{r.role}` or higher."
            )
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref_of[r.body]}},
            }
        params = [p[1:-1] for p in r.path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        # Query parameters, headers, patterns and every status (gate/api/openapi.py).
        openapi.complete(r.method, r.path, r.handler.__name__, r.body is not None, r.role, op)
        paths.setdefault(r.path, {})[r.method.lower()] = op
    components["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                "required": ["code", "message"],
            }
        },
    }
    openapi.unique_operation_ids(paths)
    extra = openapi.components()
    components.update(extra["schemas"])
    return {
        "openapi": "3.1.0",
        "info": {"title": "Gate", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": extra["responses"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }

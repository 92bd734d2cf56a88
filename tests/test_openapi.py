"""/openapi.json is a document a client can be generated from: valid, complete, not drifting."""

from __future__ import annotations

import inspect
import re

import pytest
from openapi_spec_validator import validate

from gate.api import wallet as api_wallet
from gate.api.openapi import HEADERS, QUERY
from gate.api.routes import ROUTES, openapi_document
from gate.history import ledger
from tests.conftest import Client

NO_REDIS = {"/healthz", "/openapi.json", "/metrics", "/billing", "/billing/assets/{name}"}


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(openapi_document())


def test_every_route_lists_what_it_can_answer() -> None:
    doc = openapi_document()
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        statuses = set(op["responses"])
        if route.path not in NO_REDIS:
            assert "503" in statuses, route.path  # gate_unavailable
        if route.role:
            assert {"401", "403"} <= statuses, route.path
        if route.body is not None:
            assert {"400", "413"} <= statuses, route.path
        for status, answer in op["responses"].items():
            if status.startswith(("4", "5")):
                assert answer["$ref"] == "#/components/responses/Error", (route.path, status)
        for param in op.get("parameters", []):
            if param["in"] == "path":
                assert "pattern" in param["schema"], (route.path, param["name"])
    calls = doc["paths"]["/v1/calls"]["post"]["responses"]
    assert {"200", "201", "402", "409", "422", "429", "503"} <= set(calls)
    assert "304" in doc["paths"]["/v1/wallet"]["get"]["responses"]
    assert "201" in doc["paths"]["/v1/wallet/topup"]["post"]["responses"]
    error = doc["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["code", "message"]


_READS = re.compile(
    r"""(?:query\.get|q\.get|query_int\(request,|_date_ms\(request,)\s*\(?\s*["']([a-z_]+)["']"""
)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_documented_query_parameters_are_the_ones_the_handler_reads(route: object) -> None:
    handler = route.handler  # type: ignore[attr-defined]
    source = inspect.getsource(handler)
    if "filters_from(request)" in source:
        source += inspect.getsource(api_wallet.filters_from)
    read = set(_READS.findall(source))
    documented = {p["name"] for p in QUERY.get(handler.__name__, [])}
    # Every name the handler's own code reads is documented (helpers it calls may read more).
    assert read <= documented, f"{handler.__name__}: reads {read}, documents {documented}"
    headers = {p["name"] for p in HEADERS.get(handler.__name__, [])}
    for name in re.findall(r"""headers\.get\(\s*["']([A-Za-z-]+)["']""", source):
        if name != "Authorization":
            assert name in headers, f"{handler.__name__} reads header {name}, undocumented"


async def test_the_served_document_is_the_generated_one(client: Client) -> None:
    served = await (await client.get("/openapi.json")).json()
    assert served["paths"]["/v1/wallet/transactions"]["get"]["parameters"][0]["name"] == (
        "workspace_id"
    )
    assert served == openapi_document()


def test_the_service_filter_documents_exactly_the_values_the_ledger_takes() -> None:
    """It listed row types (sms, chat, number_rental …), four of which answer 400."""
    (service,) = [p for p in QUERY["transactions"] if p["name"] == "service"]
    named = set(re.findall(r"\b(\w+)(?= \(|,| or )", service["description"]))
    assert set(ledger.SERVICES) <= named, (named, service["description"])

"""Operations endpoints: liveness, readiness (and its recovery), metrics, the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

from redis.asyncio import Redis

from gate import __version__
from gate.api.http import CTX
from gate.api.routes import ROUTES
from tests.conftest import Client, MakeClient, auth, new_workspace


async def test_healthz(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "version": __version__}


async def test_readyz_when_ready(client: Client) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready"
    assert body["redis"] == "ok"
    assert body["scripts"] >= 6


async def test_readyz_reloads_flushed_scripts(client: Client, redis: Redis) -> None:
    """After SCRIPT FLUSH the gate loads its scripts again instead of staying "not ready"."""
    await redis.script_flush()
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "ready"
    assert all(await redis.script_exists(*[s.sha for s in _scripts(client)]))


def _scripts(client: Client) -> list[Any]:
    return list(client.app[CTX].scripts.scripts.values())


async def test_readyz_when_redis_is_gone(make_client: MakeClient) -> None:
    # The app starts with a working Redis, then its context is pointed at a port nobody
    # listens on (nothing answers PING there).
    client = await make_client()
    ctx = client.app[CTX]
    dead = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
    original = ctx.scripts.client
    try:
        object.__setattr__(ctx, "client", dead)
        resp = await client.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["status"] == "unavailable"
        assert body["redis"].startswith("unreachable")
    finally:
        object.__setattr__(ctx, "client", original)
        await dead.aclose()
    assert (await client.get("/readyz")).status == 200


def _samples(text: str, name: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            found[labels] = float(value)
    return found


async def test_metrics(client: Client) -> None:
    ws = await new_workspace(client)
    await client.get("/v1/wallet", headers=auth(ws["key"]))
    await client.get("/v1/wallet", headers={"Authorization": "Bearer nope"})
    await client.get("/no/such/route")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert "# TYPE gate_http_requests_total counter" in text
    requests = _samples(text, "gate_http_requests_total")
    assert requests['gate_http_requests_total{method="GET",route="/v1/wallet",status="200"}'] >= 1
    assert requests['gate_http_requests_total{method="GET",route="/v1/wallet",status="401"}'] >= 1
    assert requests['gate_http_requests_total{method="POST",route="/v1/workspaces",status="201"}']
    assert any('status="404"' in labels for labels in requests)
    lua = _samples(text, "gate_lua_calls_total")
    assert lua['gate_lua_calls_total{code="0",script="workspace_create"}'] >= 1
    assert "gate_http_request_seconds_bucket" in text

    # Counters move with traffic.
    await client.get("/v1/wallet", headers=auth(ws["key"]))
    again = _samples(await (await client.get("/metrics")).text(), "gate_http_requests_total")
    key = 'gate_http_requests_total{method="GET",route="/v1/wallet",status="200"}'
    assert again[key] == requests[key] + 1


async def test_openapi_document(client: Client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert re.match(r"^3\.1\.\d+$", doc["openapi"])
    assert doc["info"]["title"] == "Gate"
    assert doc["info"]["version"]
    schemas = doc["components"]["schemas"]
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["summary"] == route.summary
        assert op["responses"]
        params = re.findall(r"\{(\w+)\}", route.path)
        assert [p["name"] for p in op.get("parameters", []) if p["in"] == "path"] == params
        if route.role:
            assert op["security"] == [{"bearer": []}]
            assert route.role in op["description"]
        if route.body is None:
            assert "requestBody" not in op
            continue
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        name = ref.rsplit("/", 1)[1]
        assert ref == f"#/components/schemas/{name}"
        assert name == route.body.__name__
    assert len({(r.method, r.path) for r in ROUTES}) == sum(
        len(ops) for ops in doc["paths"].values()
    )
    # Every object a request may contain forbids unknown fields, as the server does.
    for name, schema in schemas.items():
        if name == "Error":
            continue
        assert schema["type"] == "object", name
        assert schema.get("additionalProperties") is False, name
    topup = schemas["Topup"]
    assert set(topup["required"]) == {"amount_usd"}  # payment_method_id: the default
    _refs_resolve(doc, doc)


def _refs_resolve(doc: dict[str, Any], node: Any) -> None:
    """Every $ref in the document points at a schema that exists."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target: Any = doc
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            assert isinstance(target, dict)
        for value in node.values():
            _refs_resolve(doc, value)
    elif isinstance(node, list):
        for value in node:
            _refs_resolve(doc, value)

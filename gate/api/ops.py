"""Operational endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gate import __version__, metrics
from gate.api.http import CIRCUIT, CTX, json
from gate.history.archiver import Archiver

ARCHIVER = web.AppKey("archiver", Archiver)  # set when the ledger archive is on


async def healthz(request: web.Request) -> web.StreamResponse:
    return json({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    circuit = request.app[CIRCUIT]
    if circuit.is_open:
        down_s = time.monotonic() - circuit.opened_at
        return json(
            {"status": "unavailable", "redis": f"unreachable for {down_s:.1f} s: {circuit.reason}"},
            503,
        )
    try:
        await ctx.client.ping()
        loaded = await ctx.scripts.loaded()
        if not loaded:
            # Redis lost the scripts (SCRIPT FLUSH, a restart without AOF, a failover): load
            # them again here. Calls would reload them on NOSCRIPT anyway, but a balancer
            # that stops sending traffic to a "not ready" gate would never let that happen.
            await ctx.scripts.load()
            loaded = await ctx.scripts.loaded()
    except Exception as err:  # any Redis failure means "not ready", with the reason
        return json({"status": "unavailable", "redis": f"unreachable: {err}"}, 503)
    if not loaded:
        return json({"status": "unavailable", "redis": "ok", "scripts": "not loaded"}, 503)
    body = {"status": "ready", "redis": "ok", "scripts": len(ctx.scripts.scripts)}
    archiver = request.app.get(ARCHIVER)
    if archiver is not None:
        # Detail, not readiness: calls are decided in Redis whether or not SQL keeps up.
        st = archiver.status
        body["archive"] = {
            "database": archiver.archive.dialect,
            "lag_rows": st.lag_rows,
            "lag_s": st.lag_s,
            "passes": st.passes,
            "last_pass_ms": st.last_pass_ms,
            "error": st.error,
        }
    return json(body)


async def prometheus(request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def openapi(request: web.Request) -> web.StreamResponse:
    from gate.api.routes import openapi_document  # the route table imports this module

    return json(openapi_document())

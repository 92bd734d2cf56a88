"""The app factory: `create_app(settings)` wires Redis, scripts, services and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis, RedisCluster

from gate.api import events as api_events
from gate.api import routes
from gate.api.http import (
    AUTH,
    CALLS,
    CTX,
    MAX_BODY,
    OUTBOX,
    RATES,
    TICKER,
    WALLET,
    WORKSPACES,
    error_middleware,
)
from gate.api.ops import ARCHIVER
from gate.calls.service import Calls, RateBook
from gate.calls.ticker import Ticker
from gate.clock import Clock, SystemClock
from gate.context import Context
from gate.delivery.outbox import Outbox
from gate.history.archive import Archive
from gate.history.archiver import Archiver
from gate.settings import Settings
from gate.store import redis_client
from gate.store.scripts import Scripts
from gate.tenancy.auth import Authenticator
from gate.tenancy.workspaces import Workspaces
from gate.wallet.payments import PaymentProvider, SandboxProvider
from gate.wallet.service import Wallet

log = logging.getLogger("gate")


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    payments: PaymentProvider | None = None,
    client: Redis | RedisCluster | None = None,
) -> web.Application:
    """A Gate application; Redis is connected and scripts loaded when the app starts."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[error_middleware])
    routes.add_routes(app)
    api_events.setup(app)  # end open event streams on shutdown
    rates = RateBook(settings.rates)  # a bad card fails the boot, naming the file and entry
    app[RATES] = rates

    async def services(app: web.Application) -> AsyncIterator[None]:
        own = client is None
        if client is None:
            assert settings.redis_url, "the CLI starts a private redis-server when unset"
            redis = await redis_client.connect(settings.redis_url)
        else:
            redis = client
        scripts = Scripts(redis)
        await scripts.load()
        archive = await Archive.open(settings.database_url) if settings.database_url else None
        ctx = Context(redis, scripts, clock or SystemClock(), settings, archive=archive)
        workspaces = Workspaces(ctx)
        app[CTX] = ctx
        app[AUTH] = Authenticator(redis, settings.platform_key, settings.auth_cache_s)
        app[WORKSPACES] = workspaces
        app[WALLET] = Wallet(ctx, workspaces, payments or SandboxProvider())
        app[CALLS] = Calls(ctx, rates)
        outbox = Outbox(ctx)
        ticker = Ticker(ctx)
        ctx.notifier.on_events = outbox.notify
        ctx.notifier.on_ticks = ticker.notify
        app[OUTBOX] = outbox
        app[TICKER] = ticker
        await outbox.start()
        await ticker.start()
        archiver = None
        if archive is not None:
            archiver = app[ARCHIVER] = Archiver(ctx, archive)
            await archiver.start()
        log.info("gate ready: %d Lua scripts loaded", len(scripts.scripts))
        yield
        await ticker.stop()
        await outbox.stop()
        if archiver is not None:
            await archiver.stop()
        if archive is not None:
            await archive.close()
        if own:
            await redis.aclose()

    app.cleanup_ctx.append(services)
    return app

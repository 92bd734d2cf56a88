"""The app factory: `create_app(settings)` wires Redis, scripts, services and routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Protocol

from aiohttp import web
from redis.asyncio import Redis, RedisCluster

from gate.api import events as api_events
from gate.api import routes
from gate.api.http import (
    AUTH,
    AUTOMATION,
    CALLS,
    CHARGES,
    CIRCUIT,
    CTX,
    FANOUT,
    LIMITER,
    MAX_BODY,
    METHODS,
    NUMBERS,
    OUTBOX,
    PLANS,
    RATES,
    STREAMS_REDIS,
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
from gate.delivery.fanout import Fanout
from gate.delivery.mail import LogMailer, Mailer, SmtpMailer
from gate.delivery.outbox import Outbox
from gate.history.archive import Archive
from gate.history.archiver import Archiver
from gate.settings import Settings
from gate.store import redis_client
from gate.store.circuit import Circuit
from gate.store.scripts import Scripts
from gate.tasks import cancel
from gate.tenancy.apikeys import listen_for_revocations
from gate.tenancy.auth import Authenticator
from gate.tenancy.limits import KeyLimiter
from gate.tenancy.workspaces import Workspaces
from gate.wallet.automation import Automation
from gate.wallet.charges import Charges
from gate.wallet.methods import PaymentMethods
from gate.wallet.numbers import Numbers, Renewals
from gate.wallet.payments import PaymentProvider, SandboxProvider
from gate.wallet.plans import CycleRoller, Plans
from gate.wallet.refunds import Refunds, recovery
from gate.wallet.service import Wallet
from gate.wallet.stripe_provider import StripeProvider

log = logging.getLogger("gate")


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    payments: PaymentProvider | None = None,
    client: Redis | RedisCluster | None = None,
    mailer: Mailer | None = None,
) -> web.Application:
    """A Gate application; Redis is connected and scripts loaded when the app starts."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[error_middleware])
    routes.add_routes(app)
    api_events.setup(app)  # end open event streams on shutdown
    rates = RateBook(settings.rates)  # a bad card fails the boot, naming the file and entry
    app[LIMITER] = KeyLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app[RATES] = rates

    async def services(app: web.Application) -> AsyncIterator[None]:
        own = client is None
        circuit = app[CIRCUIT] = Circuit()
        if client is None:
            assert settings.redis_url, "the CLI starts a private redis-server when unset"
            deadline_s = settings.redis_timeout_ms / 1000
            circuit.open_after_s = deadline_s  # timeouts over at least one deadline
            # A dead Redis refuses a connect at once; a slow connect is a busy host.
            connect_s = max(deadline_s, 1.0)
            redis = await redis_client.connect(
                settings.redis_url,
                circuit=circuit,
                socket_timeout=deadline_s,
                socket_connect_timeout=connect_s,
            )
            # Event streams block in XREAD for seconds: their own pool, without the per-command
            # deadline, so they never hold the connections the call path needs.
            app[STREAMS_REDIS] = await redis_client.connect(
                settings.redis_url, circuit=circuit, socket_connect_timeout=connect_s
            )
        else:
            redis = app[STREAMS_REDIS] = client
        # One stop per resource, pushed as it starts: a stop that fails (Redis is gone, say) is
        # logged on one line and the rest still stop; a start that fails stops what came before.
        async with AsyncExitStack() as stack:
            if own:
                stack.push_async_callback(_stop, "redis", redis.aclose)
                stack.push_async_callback(_stop, "redis streams", app[STREAMS_REDIS].aclose)
            stack.push_async_callback(_stop, "redis circuit", circuit.stop)
            await start_services(app, stack, redis, circuit)
            yield

    async def start_services(
        app: web.Application, stack: AsyncExitStack, redis: Redis | RedisCluster, circuit: Circuit
    ) -> None:
        scripts = Scripts(redis)
        await scripts.load()
        archive = await Archive.open(settings.database_url) if settings.database_url else None
        if archive is not None:
            stack.push_async_callback(_stop, "archive", archive.close)
        ctx = Context(
            redis, scripts, clock or SystemClock(settings.clock_skew_ms), settings, archive=archive
        )
        workspaces = Workspaces(ctx)
        app[CTX] = ctx
        app[AUTH] = Authenticator(
            redis, settings.platform_key, settings.auth_cache_s, settings.switch_key
        )
        app[WORKSPACES] = workspaces
        app[AUTH].on_expired = workspaces.expire_key  # expired keys go, on the audit log
        provider = payments or _provider(settings, redis)
        app[WALLET] = Wallet(ctx, workspaces, provider)
        app[METHODS] = PaymentMethods(ctx, workspaces, provider)
        app[CALLS] = Calls(ctx, rates)
        app[CHARGES] = Charges(app[WALLET], lambda: rates.card)
        app[NUMBERS] = numbers = Numbers(ctx, rates)
        app[PLANS] = Plans(ctx, lambda: rates.card)
        cycles = CycleRoller(app[PLANS])
        if (default_plan := app[PLANS].default_plan()) is not None:
            app[PLANS].resolve(default_plan)  # unknown: the boot fails, not a signup
        renewals = Renewals(numbers)
        outbox = Outbox(ctx)
        ticker = Ticker(ctx)
        if mailer is None and settings.smtp_url:
            alert_mailer: Mailer = SmtpMailer(settings.smtp_url, settings.mail_from)
        else:
            alert_mailer = mailer or LogMailer()
        automation = Automation(
            ctx,
            provider,
            alert_mailer,
            per_min_micros=rates.typical_per_min_micros,
            recover=recovery(app[WALLET], Refunds(ctx, app[WALLET], provider)),
        )
        app[AUTOMATION] = automation

        ctx.notifier.on_events = outbox.notify
        ctx.notifier.on_automation = automation.notify
        ctx.notifier.on_ticks = ticker.notify
        app[OUTBOX] = outbox
        app[TICKER] = ticker
        if isinstance(provider, StripeProvider):
            stack.push_async_callback(_stop, "stripe client", provider.close)
        services_in_order: tuple[tuple[str, _Service], ...] = (
            ("outbox", outbox),
            ("ticker", ticker),
        )
        for name, service in services_in_order:
            await service.start()
            stack.push_async_callback(_stop, name, service.stop)
        if archive is not None:
            archiver = app[ARCHIVER] = Archiver(ctx, archive)
            await archiver.start()
            stack.push_async_callback(_stop, "archiver", archiver.stop)
        for name, service in (
            ("automation", automation),
            ("renewals", renewals),
            ("cycles", cycles),
        ):
            await service.start()
            stack.push_async_callback(_stop, name, service.stop)
        fanout = app[FANOUT] = Fanout(app[STREAMS_REDIS])
        stack.push_async_callback(_stop, "fanout", fanout.stop)
        # On a cluster too: a PUBLISH on any node reaches the subscribers of every node.
        revocations = asyncio.create_task(
            listen_for_revocations(
                app[STREAMS_REDIS], app[AUTH].forget_workspace, app[AUTH].forget_all
            ),
            name="gate-key-revocations",
        )
        stack.push_async_callback(_stop, "revocation listener", cancel, [revocations])
        log.info("gate ready: %d Lua scripts loaded", len(scripts.scripts))

    app.cleanup_ctx.append(services)
    return app


class _Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def _stop(name: str, stop: Callable[..., Awaitable[object]], *args: object) -> None:
    """Stop one service; a failure is one log line and never skips the others' stops."""
    try:
        await stop(*args)
    except Exception as err:
        log.error(
            "shutdown: stopping the %s failed (%s: %s); going on", name, type(err).__name__, err
        )


def _provider(settings: Settings, redis: Redis | RedisCluster) -> PaymentProvider:
    """GATE_PAYMENTS: the sandbox (default) or Stripe."""
    if settings.payments == "stripe":
        assert settings.stripe_api_key, "settings.load checks GATE_STRIPE_API_KEY"
        return StripeProvider(
            redis, settings.stripe_api_key, settings.stripe_api_base, settings.crash_at
        )
    return SandboxProvider()

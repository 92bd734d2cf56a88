"""HTTP plumbing shared by the handlers: JSON in and out, auth, and the error middleware."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import orjson
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate import metrics
from gate.calls.service import Calls, RateBook
from gate.calls.ticker import Ticker
from gate.context import Context
from gate.delivery.fanout import Fanout
from gate.delivery.outbox import Outbox
from gate.errors import (
    ClientGone,
    GateError,
    GateUnavailable,
    InvalidJSON,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ValidationFailed,
)
from gate.store.circuit import Circuit
from gate.tenancy.audit import Actor
from gate.tenancy.auth import Authenticator, Principal, Role
from gate.tenancy.limits import MUTATING, KeyLimiter
from gate.tenancy.workspaces import Workspaces
from gate.wallet.automation import Automation
from gate.wallet.charges import Charges
from gate.wallet.methods import PaymentMethods
from gate.wallet.numbers import Numbers
from gate.wallet.plans import Plans
from gate.wallet.service import Wallet

log = logging.getLogger("gate.api.http")
T = TypeVar("T")
MAX_BODY = 64 * 1024
# Shared state of the app, in one place.
AUTH = web.AppKey("auth", Authenticator)
CTX = web.AppKey("ctx", Context)
WORKSPACES = web.AppKey("workspaces", Workspaces)
WALLET = web.AppKey("wallet", Wallet)
OUTBOX = web.AppKey("outbox", Outbox)
RATES = web.AppKey("rates", RateBook)
CALLS = web.AppKey("calls", Calls)
TICKER = web.AppKey("ticker", Ticker)
CIRCUIT = web.AppKey("circuit", Circuit)
LIMITER = web.AppKey("limiter", KeyLimiter)
FANOUT = web.AppKey("fanout", Fanout)  # wakes the event streams (gate/delivery/fanout.py)
# The Redis client for blocking reads (event streams): its own pool, no per-command deadline.
STREAMS_REDIS: web.AppKey[Redis | RedisCluster] = web.AppKey("streams_redis")
AUTOMATION = web.AppKey("automation", Automation)
METHODS = web.AppKey("methods", PaymentMethods)
CHARGES = web.AppKey("charges", Charges)
NUMBERS = web.AppKey("numbers", Numbers)
PLANS = web.AppKey("plans", Plans)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


async def read_body(request: web.Request, timeout_s: float, max_bytes: int | None = None) -> bytes:
    """The whole body within `timeout_s` (else 408 and the connection closes); a client gone
    mid-body is counted and logged once at DEBUG, not an ERROR with a traceback."""
    if max_bytes is not None and (request.content_length or 0) > max_bytes:
        raise PayloadTooLarge(f"the body may be at most {max_bytes} bytes")
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        metrics.BODY_TIMEOUTS.inc()
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s; send it at once"
        ) from None
    except (ConnectionResetError, ClientConnectionResetError) as err:
        metrics.CLIENT_DISCONNECTS.inc()
        log.debug("client %s went away mid-body on %s", request.remote, request.path)
        raise ClientGone("the client closed the connection before its body arrived") from err
    if max_bytes is not None and len(raw) > max_bytes:
        raise PayloadTooLarge(f"the body may be at most {max_bytes} bytes")
    return raw


async def decode(request: web.Request, schema: type[T]) -> T:
    """The request body validated against `schema`; 400 with a clear message otherwise."""
    raw = await read_body(request, request.app[CTX].settings.body_timeout_s)
    if not raw:
        raise InvalidJSON("send a JSON object as the request body")
    try:
        return msgspec.json.decode(raw, type=schema)
    except msgspec.ValidationError as err:
        raise ValidationFailed(f"{err}; see GET /openapi.json for the schema") from err
    except msgspec.DecodeError as err:
        raise InvalidJSON(f"the body is not valid JSON: {err}") from err


async def principal(request: web.Request, role: Role) -> Principal:
    who = await request.app[AUTH].authenticate(request.headers.get("Authorization"))
    if role is Role.switch:
        who.require_switch()
    else:
        who.require(role)
    if request.method in MUTATING and who.role not in (Role.platform, Role.switch):
        limiter = request.app.get(LIMITER)
        if limiter is not None:
            limiter.take(who.key_id)
    return who


async def csv_download(request: web.Request, name: str) -> web.StreamResponse:
    """A CSV attachment named `<name>-<today by the gate's clock>.csv`, headers sent."""
    today = datetime.fromtimestamp(request.app[CTX].clock.now_ms() / 1000, UTC).date()
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}-{today}.csv"',
        }
    )
    await response.prepare(request)
    return response


def actor(request: web.Request, who: Principal) -> Actor:
    """Who makes this change, for the audit log: key, person (when named) and address."""
    return Actor(who.key_id, who.person, request.remote or "")


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be a whole number", field=name) from None
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be from {low} to {high}", field=name)
    return value


_HTTP_ERRORS: dict[int, type[GateError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes {"error": {"code", "message", ...}}; metrics for every request."""
    started = time.perf_counter()
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    try:
        response = await handler(request)
    except GateError as err:
        retry = {"Retry-After": str(err.retry_after_s)} if isinstance(err, RateLimited) else None
        response = json(err.body(), err.status, retry)
        if isinstance(err, RequestTimeout | ClientGone):
            response.force_close()  # the rest of the body is never read
    except web.HTTPException as err:
        if err.status < 400:
            raise
        cls = _HTTP_ERRORS.get(err.status)
        if cls is NotFound:
            gate_err: GateError = NotFound(f"no route {request.method} {request.path}")
        elif cls is MethodNotAllowed:
            gate_err = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        elif cls is PayloadTooLarge:
            gate_err = PayloadTooLarge(f"the body is larger than {MAX_BODY} bytes")
        else:
            gate_err = GateError(err.reason)
            gate_err.status = err.status
            gate_err.code = err.reason.lower().replace(" ", "_")
        response = json(gate_err.body(), gate_err.status)
    except (RedisConnectionError, RedisTimeoutError) as err:
        # No traceback per request: the circuit logs each outage once (gate/store/circuit.py).
        unavailable = GateUnavailable(
            "Gate's store did not answer in time; retry shortly (starts, ends and top-ups "
            "are idempotent). Switches: fail outbound starts closed, inbound may fail open",
        )
        unavailable.__cause__ = err
        response = json(unavailable.body(), unavailable.status, {"Retry-After": "1"})
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = json(
            {"error": {"code": "internal_error", "message": "internal error; see the gate log"}},
            500,
        )
    _count(name, request.method, response.status, time.perf_counter() - started)
    return response


_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _count(route: str, method: str, status: int, seconds: float) -> None:
    """Record one request; the labelled metric children are looked up once and kept."""
    key = (route, method, status)
    pair = _children.get(key)
    if pair is None:
        pair = _children[key] = (
            metrics.REQUESTS.labels(route, method, str(status)),
            metrics.LATENCY.labels(route, method),
        )
    pair[0].inc()
    pair[1].observe(seconds)

"""Server-Sent Events: the workspace's events, live and resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from gate.api.http import CTX, FANOUT, STREAMS_REDIS, principal
from gate.delivery import events
from gate.errors import NotFound, TooManyStreams, ValidationFailed
from gate.settings import Settings
from gate.store import keys
from gate.store.circuit import is_unavailable
from gate.store.redis_client import entries, text
from gate.tenancy.auth import Role

log = logging.getLogger("gate.events")

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
# A waiting stream looks at its connection this often, to notice a client that went away.
BLOCK_MS = 2000
BATCH = 100  # events per read
RETRY_MS = 2000  # how long an EventSource waits before it reconnects


class OpenStreams:
    """The event streams this app is serving: shutdown ends them; caps per key and workspace."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self.count = 0
        self.by_key: dict[str, int] = {}
        self.by_workspace: dict[str, int] = {}

    def admit(self, key_id: str, workspace_id: str, settings: Settings) -> None:
        """Count one more stream, or raise TooManyStreams past GATE_SSE_MAX_PER_*."""
        if self.by_key.get(key_id, 0) >= settings.sse_max_per_key:
            raise TooManyStreams(
                f"this key has {settings.sse_max_per_key} event streams open in this process "
                "already; close one, or share one stream between your dashboards",
            )
        if self.by_workspace.get(workspace_id, 0) >= settings.sse_max_per_workspace:
            raise TooManyStreams(
                f"this workspace has {settings.sse_max_per_workspace} event streams open in "
                "this process already; close one, or share one stream between your dashboards",
            )
        self.count += 1
        self.by_key[key_id] = self.by_key.get(key_id, 0) + 1
        self.by_workspace[workspace_id] = self.by_workspace.get(workspace_id, 0) + 1

    def leave(self, key_id: str, workspace_id: str) -> None:
        self.count -= 1
        for counts, name in ((self.by_key, key_id), (self.by_workspace, workspace_id)):
            counts[name] -= 1
            if counts[name] <= 0:
                del counts[name]


OPEN_STREAMS = web.AppKey("open_streams", OpenStreams)


def setup(app: web.Application) -> None:
    """Track the app's event streams and end them when it shuts down."""
    app[OPEN_STREAMS] = OpenStreams()
    app.on_shutdown.append(close_all)


async def close_all(app: web.Application) -> None:
    """End every open event stream (an on_shutdown hook); waits up to a second for them."""
    streams = app.get(OPEN_STREAMS)
    if streams is None:
        return
    streams.closing.set()
    for _ in range(100):
        if streams.count == 0:
            return
        await asyncio.sleep(0.01)


def _frame(workspace_id: str, entry_id: str, fields: Any) -> bytes:
    event = events.render(workspace_id, entry_id, fields)
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event["id"].encode(),
        event["type"].encode(),
        orjson.dumps(event),
    )


async def _serve(
    request: web.Request,
    response: web.StreamResponse,
    streams: OpenStreams,
    workspace_id: str,
    cursor: str,
) -> None:
    """Write the workspace's events after `cursor` as they come, until the client goes.

    The process's one reader (gate/delivery/fanout.py) wakes this stream when its workspace's
    events move; the stream then reads its own events from its own cursor with XRANGE on the
    streams' pool, never on the call path's, and never holds a connection while it waits.
    """
    streams_redis = request.app[STREAMS_REDIS]
    k = keys.for_workspace(workspace_id)
    loop = asyncio.get_running_loop()
    subscriber = request.app[FANOUT].subscribe(workspace_id, cursor)
    closing = asyncio.ensure_future(streams.closing.wait())
    try:
        await response.write(b"retry: %d\n\n" % RETRY_MS)
        last_write = loop.time()
        woken_up = True  # read once at the start: catch up from the cursor
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            got = []
            if woken_up:
                subscriber.wake.clear()  # before the read: a wake during it means read again
                got = entries(await streams_redis.xrange(k.events, f"({cursor}", "+", count=BATCH))
            if got:
                cursor = text(got[-1][0])
                await response.write(b"".join(_frame(workspace_id, text(i), f) for i, f in got))
                last_write = loop.time()
                if len(got) == BATCH:
                    continue  # more are waiting
            elif loop.time() >= last_write + KEEPALIVE_S:
                await response.write(b": keep-alive\n\n")
                last_write = loop.time()
            idle_left = last_write + KEEPALIVE_S - loop.time()
            woken = asyncio.ensure_future(subscriber.wake.wait())
            try:
                # Wake up now and then anyway, to notice a client that went away.
                await asyncio.wait(
                    {woken, closing},
                    timeout=max(0.001, min(BLOCK_MS / 1000, idle_left)),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                woken.cancel()
            woken_up = subscriber.wake.is_set()
            if closing.done():
                break  # shutting down
    except ConnectionError:  # the client went away mid-write
        pass
    except RedisError as err:  # end the stream; the client resumes with Last-Event-ID
        # An outage is logged once by the circuit, not once per open stream.
        if not is_unavailable(err):
            log.warning("event stream of %s ended by a Redis error", workspace_id, exc_info=True)
    finally:
        # Also reached when aiohttp cancels the handler because the client went away.
        closing.cancel()
        request.app[FANOUT].unsubscribe(subscriber)


async def stream(request: web.Request) -> web.StreamResponse:
    """GET /v1/events: new events as they happen; after Last-Event-ID; or all with ?from=0."""
    who = await principal(request, Role.agent)
    workspace_id = who.workspace(request.query.get("workspace_id"))
    # Even the opening reads use the streams' client: a burst of opening streams must not
    # take the call path's connections (on a cluster they are not pooled with a wait).
    streams_redis = request.app[STREAMS_REDIS]
    k = keys.for_workspace(workspace_id)
    if who.workspace_id is None and not await streams_redis.exists(k.ws):
        raise NotFound("no such workspace")
    last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    start_from = request.query.get("from")
    if last:
        cursor = events.parse_event_id(workspace_id, last)
    elif start_from is not None:
        if start_from != "0":
            raise ValidationFailed("from must be 0 (replay every retained event)", field="from")
        cursor = "0-0"
    else:
        # Resolve "only new events" to a real id now: re-reading with "$" after an idle
        # read would skip whatever arrived in between.
        newest = entries(await streams_redis.xrevrange(k.events, "+", "-", count=1))
        cursor = text(newest[0][0]) if newest else "0-0"

    streams = request.app.get(OPEN_STREAMS) or OpenStreams()
    streams.admit(who.key_id, workspace_id, request.app[CTX].settings)  # 429 beyond the caps
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx would buffer the stream otherwise
            }
        )
        await response.prepare(request)
        await _serve(request, response, streams, workspace_id, cursor)
    finally:
        streams.leave(who.key_id, workspace_id)
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response

"""Server-Sent Events: the workspace's events, live and resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from gate.api.http import CTX, STREAMS_REDIS, principal
from gate.delivery import events
from gate.errors import NotFound, ValidationFailed
from gate.store import keys
from gate.store.circuit import is_unavailable
from gate.store.redis_client import entries, text
from gate.tenancy.auth import Role

log = logging.getLogger("gate.events")

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
# One XREAD BLOCK holds a Redis connection this long at most, so an idle stream notices a
# gone client or a shutdown within it.
BLOCK_MS = 2000
BATCH = 100  # events per read
RETRY_MS = 2000  # how long an EventSource waits before it reconnects


class OpenStreams:
    """The event streams this app is serving, so shutdown can end them."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self.count = 0


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


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Take an abandoned read's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


async def stream(request: web.Request) -> web.StreamResponse:
    """GET /v1/events: new events as they happen; after Last-Event-ID; or all with ?from=0."""
    who = await principal(request, Role.agent)
    workspace_id = who.workspace(request.query.get("workspace_id"))
    ctx = request.app[CTX]
    streams_redis = request.app[STREAMS_REDIS]
    k = keys.for_workspace(workspace_id)
    if who.workspace_id is None and not await ctx.client.exists(k.ws):
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
        newest = entries(await ctx.client.xrevrange(k.events, "+", "-", count=1))
        cursor = text(newest[0][0]) if newest else "0-0"

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx would buffer the stream otherwise
        }
    )
    await response.prepare(request)
    streams = request.app.get(OPEN_STREAMS) or OpenStreams()
    streams.count += 1
    loop = asyncio.get_running_loop()
    closing = asyncio.ensure_future(streams.closing.wait())
    read: asyncio.Future[Any] | None = None
    try:
        await response.write(b"retry: %d\n\n" % RETRY_MS)
        last_write = loop.time()
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            idle_left = last_write + KEEPALIVE_S - loop.time()
            block = max(1, min(BLOCK_MS, int(idle_left * 1000)))  # BLOCK 0 would wait forever
            read = asyncio.ensure_future(
                streams_redis.xread({k.events: cursor}, count=BATCH, block=block)
            )
            await asyncio.wait({read, closing}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                break  # shutting down
            reply, read = read.result(), None
            frames = []
            for _key, items in reply.items() if isinstance(reply, dict) else reply or []:
                for entry_id, fields in entries(items):
                    cursor = text(entry_id)
                    frames.append(_frame(workspace_id, cursor, fields))
            if frames:
                await response.write(b"".join(frames))
                last_write = loop.time()
            elif loop.time() >= last_write + KEEPALIVE_S:
                await response.write(b": keep-alive\n\n")
                last_write = loop.time()
    except ConnectionError:  # the client went away mid-write
        pass
    except RedisError as err:  # end the stream; the client resumes with Last-Event-ID
        # An outage is logged once by the circuit, not once per open stream.
        if not is_unavailable(err):
            log.warning("event stream of %s ended by a Redis error", workspace_id, exc_info=True)
    finally:
        # Also reached when aiohttp cancels the handler because the client went away.
        closing.cancel()
        streams.count -= 1
        if read is not None:
            read.cancel()  # redis-py drops the connection of an unfinished read
            read.add_done_callback(_retrieve)
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response

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
from gate.errors import NotFound, RateLimited, TooManyStreams, ValidationFailed
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
        # token buckets (tokens, last refill in loop time): replay rows per workspace, stream
        # opens per key
        self._rows: dict[str, tuple[float, float]] = {}
        self._opens: dict[str, tuple[float, float]] = {}

    @staticmethod
    def _take(buckets: dict[str, tuple[float, float]], name: str, n: float, rate: float,
              burst: float) -> float:  # fmt: skip
        """Take n tokens (going into debt); returns the seconds the debt takes to repay."""
        now = asyncio.get_running_loop().time()
        tokens, last = buckets.get(name, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate) - n
        buckets[name] = (tokens, now)
        if len(buckets) > 10_000:  # forget the oldest idle ones
            for old in list(buckets)[:1000]:
                del buckets[old]
        return max(-tokens / rate, 0.0)

    async def spend_rows(self, workspace_id: str, rows: int, settings: Settings) -> None:
        """A workspace's streams together replay at most GATE_SSE_REPLAY_ROWS_PER_S rows a
        second in this process: past its budget a stream waits, and every batch yields the
        loop, so one tenant's backlog cannot starve the call routes of others."""
        rate = settings.sse_replay_rows_per_s
        wait = self._take(self._rows, workspace_id, rows, rate, rate)
        await asyncio.sleep(wait)

    def admit_open(self, key_id: str, settings: Settings) -> None:
        """Reconnect storms: at most GATE_SSE_OPENS_PER_S opens a second per key (a burst
        of five seconds' worth), then 429 rate_limited with Retry-After."""
        rate = settings.sse_opens_per_s
        wait = self._take(self._opens, key_id, 1, rate, rate * 5)
        if wait > 0:
            self._take(self._opens, key_id, -1, rate, rate * 5)  # a refusal costs nothing
            retry = max(1, int(wait + 0.999))
            raise RateLimited(
                f"this key opens event streams too often; reconnect after {retry} s with "
                "Last-Event-ID (an EventSource waits the stream's retry: field)",
                retry_after_s=retry,
            )

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
    resync: bytes | None = None,
) -> None:
    """Write the workspace's events after `cursor` as they come, until the client goes.

    The process's one reader (gate/delivery/fanout.py) wakes this stream when its workspace's
    events move; the stream then reads its own events from its own cursor with XRANGE on the
    streams' pool, never on the call path's, and never holds a connection while it waits.
    """
    streams_redis = request.app[STREAMS_REDIS]
    settings = request.app[CTX].settings
    k = keys.for_workspace(workspace_id)
    loop = asyncio.get_running_loop()
    subscriber = request.app[FANOUT].subscribe(workspace_id, cursor)
    closing = asyncio.ensure_future(streams.closing.wait())
    try:
        await response.write(b"retry: %d\n\n" % RETRY_MS)
        if resync is not None:
            await response.write(resync)
        last_write = loop.time()
        woken_up = True  # read once at the start: catch up from the cursor
        replaying = True  # a full batch may be waiting: pay for it before reading it
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            got = []
            if woken_up:
                if replaying:  # paid up front, so the workspace's streams take turns
                    await streams.spend_rows(workspace_id, BATCH, settings)
                subscriber.wake.clear()  # before the read: a wake during it means read again
                got = entries(await streams_redis.xrange(k.events, f"({cursor}", "+", count=BATCH))
                if not replaying and got:  # live events: paid as they come
                    await streams.spend_rows(workspace_id, len(got), settings)
                replaying = len(got) == BATCH
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


async def _resync(
    streams_redis: Any, events_key: str, workspace_id: str, cursor: str
) -> tuple[bytes | None, str]:
    """A Last-Event-ID older than the oldest event kept: events were trimmed in between,
    so a replay cannot be whole. Say so with one `resync` event and go on from the newest
    event (re-read the state: GET /v1/wallet, /v1/calls, /v1/wallet/transactions) instead
    of scanning the whole retained stream."""
    oldest = entries(await streams_redis.xrange(events_key, "-", "+", count=1))
    if not oldest or _id_key(cursor) >= _id_key(text(oldest[0][0])) or cursor == "0-0":
        return None, cursor
    newest = entries(await streams_redis.xrevrange(events_key, "+", "-", count=1))
    to = text(newest[0][0]) if newest else cursor
    body = orjson.dumps(
        {
            "type": "resync",
            "workspace_id": workspace_id,
            "last_event_id": cursor,
            "oldest_retained_id": events.event_id(workspace_id, text(oldest[0][0])),
            "message": "events after your Last-Event-ID are no longer kept; re-read the "
            "wallet, live calls and transactions, then follow this stream",
        }
    )
    frame = b"id: %s\nevent: resync\ndata: %s\n\n" % (
        events.event_id(workspace_id, to).encode(),
        body,
    )
    return frame, to


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


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
    resync = None
    if last:
        cursor = events.parse_event_id(workspace_id, last)
        resync, cursor = await _resync(streams_redis, k.events, workspace_id, cursor)
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
    streams.admit_open(who.key_id, request.app[CTX].settings)  # 429 for a reconnect storm
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
        await _serve(request, response, streams, workspace_id, cursor, resync)
    finally:
        streams.leave(who.key_id, workspace_id)
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response

"""One Redis reader per process wakes every event stream (SSE) of that process.

Each open `GET /v1/events` used to block in its own `XREAD` and so held one Redis connection
for as long as it was open: a few hundred streams took the connections the call path needs.
Now one reader task blocks in a single `XREAD` over the event streams of every workspace
that has an open stream here, and wakes that workspace's subscribers when something
arrives. A woken subscriber reads its own events from its own cursor with a short `XRANGE`,
so a subscriber that resumes far behind, or was slow, never misses or repeats one.

Order of a subscription, so nothing falls between catching up and being woken:
`subscribe` (the reader now watches from the subscriber's cursor) → read until caught up →
wait for a wake → read → ...

On Redis Cluster one XREAD cannot cover streams of different slots (CROSSSLOT), and each
workspace has a slot of its own: the reader then looks at every watched stream's newest entry
every `POLL_S`, all of them in one pipeline (one round trip per node, not one command per
stream or per subscriber), on the streams' own client like everything else here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis, RedisCluster

from gate.store import keys
from gate.store.circuit import is_unavailable
from gate.store.redis_client import entries, text

log = logging.getLogger("gate.delivery.fanout")

# One XREAD waits this long at most, then asks again with the streams watched since: the
# longest a new stream's first wake may wait (it caught up on its own when it subscribed).
BLOCK_MS = 250
COUNT = 100
POLL_S = 0.1  # Redis Cluster: how often each watched stream is polled
RETRY_S = 0.25  # after a failed read (Redis away: the circuit logged it)


@dataclass(eq=False)
class Subscriber:
    """One open event stream: woken when its workspace has something new."""

    workspace_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Fanout:
    """The reader of one process and the subscribers it wakes."""

    def __init__(self, client: Redis | RedisCluster) -> None:
        self.client = client
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._cursors: dict[str, str] = {}  # workspace id -> newest entry id seen
        self._task: asyncio.Task[None] | None = None
        self.reads = 0  # XREAD/XRANGE rounds of the reader, for tests and metrics

    def subscribe(self, workspace_id: str, cursor: str) -> Subscriber:
        """Watch the workspace's stream from `cursor` (a stream id) for this subscriber."""
        subscriber = Subscriber(workspace_id)
        group = self._subscribers.setdefault(workspace_id, set())
        group.add(subscriber)
        # A workspace watched already keeps its cursor: a subscriber behind it catches up
        # by itself, and wakes for what comes after.
        self._cursors.setdefault(workspace_id, cursor)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="gate-events-fanout")
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        group = self._subscribers.get(subscriber.workspace_id)
        if group is None:
            return
        group.discard(subscriber)
        if not group:
            del self._subscribers[subscriber.workspace_id]
            self._cursors.pop(subscriber.workspace_id, None)

    @property
    def watched(self) -> int:
        return len(self._cursors)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while self._cursors:
            try:
                if isinstance(self.client, RedisCluster):
                    arrived = await self._poll()
                else:
                    arrived = await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if not is_unavailable(err):
                    log.exception("event stream reader failed; retrying")
                await asyncio.sleep(RETRY_S)
                continue
            self.reads += 1
            for workspace_id, newest in arrived.items():
                if workspace_id in self._cursors and _older(self._cursors[workspace_id], newest):
                    self._cursors[workspace_id] = newest
                for subscriber in self._subscribers.get(workspace_id, ()):
                    subscriber.wake.set()

    async def _read(self) -> dict[str, str]:
        """One blocking XREAD over every watched stream: workspace id -> newest id arrived."""
        watched: dict[Any, Any] = {
            keys.for_workspace(ws).events: cursor for ws, cursor in self._cursors.items()
        }
        # The reader only needs to know that a stream moved and how far: after the wake every
        # subscriber reads its events itself. More than COUNT new ones: the next read returns
        # at once with the rest.
        reply = await self.client.xread(watched, count=COUNT, block=BLOCK_MS)
        arrived: dict[str, str] = {}
        for stream_key, items in reply.items() if isinstance(reply, dict) else reply or []:
            got = entries(items)
            if got:
                arrived[_workspace_of(text(stream_key))] = text(got[-1][0])
        return arrived

    async def _poll(self) -> dict[str, str]:
        """Redis Cluster: look at each watched stream's newest entry, then pause."""
        ids = list(self._cursors.items())
        async with self.client.pipeline(transaction=False) as pipe:
            for ws, _ in ids:
                pipe.xrevrange(keys.for_workspace(ws).events, "+", "-", count=1)
            replies = await pipe.execute()
        arrived: dict[str, str] = {}
        for (workspace_id, cursor), reply in zip(ids, replies, strict=True):
            got = entries(reply)
            if got and _older(cursor, text(got[0][0])):
                arrived[workspace_id] = text(got[0][0])
        await asyncio.sleep(POLL_S)
        return arrived


def _split(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _older(a: str, b: str) -> bool:
    """Stream id a comes before stream id b."""
    return _split(a) < _split(b)


def _workspace_of(stream_key: str) -> str:
    """The workspace id inside its events key, `gate:{ws_...}:events`."""
    return stream_key[stream_key.index("{") + 1 : stream_key.index("}")]

"""Webhook delivery of each workspace's events: signed, retried with backoff, at least once.

How the work is found: `notify` (domain code, after a script emitted events) marks the
workspace for this process's worker and wakes it at once; every `poll_ms` the worker also
claims due workspaces from the global outbox index (gate/store/due.py), which is how retries fall
due and how another process picks up the work of one that died. A periodic rescan rebuilds
the index from the workspaces' own state, in case a process died between a script and its
hint.

How one workspace is delivered: the worker takes the workspace's lease
(lua/outbox_lease-1.lua), so only one process sends its events at a time, then repeatedly
asks lua/outbox_window-3.lua for the events due now (in stream order, at most `in_flight`),
POSTs them concurrently and records the outcomes with lua/outbox_record-3.lua, which moves
the delivery cursor over events finished one after another. Nothing is marked sent before
the receiver's 2xx, so a crash in between sends again: at least once, never lost. A failed
event is retried on its own schedule (exponential backoff with jitter, kept in Redis so any
process continues it) until the retry budget runs out, then copied to the dead-letter stream;
later events do not wait for it. Receivers order and de-duplicate with `seq` and `webhook-id`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook

from gate import __version__, metrics
from gate.context import Context
from gate.delivery import events
from gate.delivery.destinations import PublicConnector, check_literal
from gate.store import keys
from gate.store.circuit import is_unavailable
from gate.store.due import DueIndex
from gate.store.keys import WsKeys
from gate.store.redis_client import text
from gate.store.scripts import Code
from gate.tasks import cancel, survive, wait_for_wake

log = logging.getLogger("gate.delivery.outbox")

SCAN = 1000  # events after the cursor one window script looks at: bounds its run time
CLAIM = 100  # most workspaces per index claim


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one send, as outbox_record takes it."""

    entry_id: str
    outcome: str  # ok | retry | dead
    detail: str
    error: str = ""  # why a send failed, for the log


QUIET_S = 10.0  # how long a workspace without a webhook URL is left alone
LIVE_TYPES = frozenset({"call.cut", "call.limit", "call.extended"})  # live calls: short back-off


@dataclass(slots=True)
class _Endpoint:
    """One webhook receiver as this process sees it."""

    failing_since: float | None = None  # time.monotonic()
    waiting: set[str] = field(default_factory=set)  # workspaces with failed events for it


def _where(url: str) -> str:
    """The receiver's host and port for the log (never a path or query: they may hold tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True, slots=True)
class _Routes:
    """Where each event of a workspace goes: call.* to the switch URL; the others there too,
    or, with GATE_SWITCH_WEBHOOK_EVENTS=call, to GATE_EVENTS_WEBHOOK_URL (or nowhere)."""

    switch_url: str | None
    switch_webhook: Webhook
    calls_only: bool
    events_url: str | None
    events_webhook: Webhook

    def of(self, flat: list[Any]) -> tuple[str | None, Webhook]:
        pairs = zip(flat[::2], flat[1::2], strict=True)
        kind = next((text(v) for k, v in pairs if text(k) == "type"), "")
        if kind.startswith("call.") or not self.calls_only:
            return self.switch_url, self.switch_webhook
        return self.events_url, self.events_webhook


class _Lost:
    """Another process took the workspace's lease: leave the index to it."""


LOST = _Lost()


class Outbox:
    """Delivers each workspace's events to its switch webhook, signed, at least once."""

    def __init__(
        self,
        ctx: Context,
        *,
        in_flight: int = 4,
        timeout_s: float = 5.0,
        first_retry_s: float = 1.0,
        max_retry_s: float = 600.0,
        budget_s: float = 6 * 3600.0,
        poll_ms: int = 50,
        lease_ms: int = 30_000,
        rescan_s: float = 60.0,
        max_workspaces: int = 256,
        live_retry_max_s: float = 2.0,
    ) -> None:
        self.ctx = ctx
        self.index = DueIndex(ctx.scripts, keys.OUTBOX_INDEX)
        self.owner = f"outbox-{uuid.uuid4().hex[:12]}"
        self.in_flight = in_flight
        self.timeout_s = timeout_s
        self.first_retry_ms = max(1, round(first_retry_s * 1000))
        self.max_retry_ms = max(self.first_retry_ms, round(max_retry_s * 1000))
        self.budget_ms = round(budget_s * 1000)
        self.poll_s = poll_ms / 1000
        self.lease_ms = lease_ms
        self.rescan_s = rescan_s
        self.max_workspaces = max_workspaces
        self.live_retry_max_ms = max(1, round(live_retry_max_s * 1000))
        # Per receiver URL: failing since when, and which workspaces wait on it, so its
        # pending events are sent at once when it answers again (_endpoint_outcomes).
        self._endpoints: dict[str, _Endpoint] = {}
        self._flush: set[str] = set()  # workspaces whose failed events are due now
        self._dirty: set[str] = set()
        self._again: set[str] = set()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._operator_session: aiohttp.ClientSession | None = None
        self._stopping = False
        # Workspaces seen without a webhook URL (and no global one): leasing, recording and
        # releasing their outbox for every event cost more than the call itself, so their
        # notifies are skipped for QUIET_S; other processes' changes are seen after that.
        self._quiet: dict[str, float] = {}

    # -- the public interface ------------------------------------------------------------

    def notify(self, workspace_id: str) -> None:
        """New events in this workspace's stream: deliver soon. Returns at once."""
        quiet_until = self._quiet.get(workspace_id)
        if quiet_until is not None:
            if time.monotonic() < quiet_until:
                return  # no webhook URL a moment ago: the rescan moves its cursor later
            del self._quiet[workspace_id]
        self._dirty.add(workspace_id)
        self._wake.set()

    def url_changed(self, workspace_id: str) -> None:
        """The workspace's webhook URL was set or cleared here: look at it afresh now."""
        self._quiet.pop(workspace_id, None)
        self.notify(workspace_id)

    async def start(self) -> None:
        """Start the background delivery tasks."""
        self._stopping = False
        # Tenants' URLs may reach public addresses only (gate/delivery/destinations.py); the
        # operator's GATE_SWITCH_WEBHOOK_URL is trusted and goes through a session of its own.
        guard = not self.ctx.settings.webhook_allow_private
        self._session = self._new_session(public_only=guard)
        self._operator_session = self._new_session() if guard else self._session
        self._tasks = [
            asyncio.create_task(self._loop(), name="gate-outbox"),
            asyncio.create_task(self._rescan_loop(), name="gate-outbox-rescan"),
        ]

    async def stop(self) -> None:
        """Stop them; undelivered events stay in Redis for the next start."""
        self._stopping = True
        active = dict(self._active)
        await cancel(self._tasks + list(active.values()))
        self._tasks = []
        # A task cancelled while its lease command was on the wire never saw the reply, so
        # its `finally` had nothing to release; the command ran all the same. Give back
        # every lease this owner may hold (outbox_release checks the owner).
        for workspace_id in active:
            try:
                await self.ctx.scripts.call(
                    "outbox_release", [keys.for_workspace(workspace_id).outbox], [self.owner]
                )
            except Exception as err:  # it runs out by itself after lease_ms
                if not is_unavailable(err):  # an outage is logged once, by the circuit
                    log.exception("could not release the outbox lease of %s", workspace_id)
        # Interrupted and not yet handled workspaces are due now, for whichever process
        # claims them first.
        left = {*active, *self._dirty, *self._again}
        self._dirty.clear()
        self._again.clear()
        if left:
            now = self.ctx.clock.now_ms()
            try:
                await self.index.notify_many(dict.fromkeys(left, now))
            except Exception as err:  # the periodic rescan of any process finds them anyway
                if not is_unavailable(err):
                    log.exception("could not hint %d workspaces at stop", len(left))
        if self._operator_session is not None and self._operator_session is not self._session:
            await self._operator_session.close()
        self._operator_session = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _new_session(self, public_only: bool = False) -> aiohttp.ClientSession:
        # PublicConnector checks every address it connects to, resolved or literal
        connector = PublicConnector if public_only else aiohttp.TCPConnector
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=connector(limit=self.max_workspaces * self.in_flight),
            headers={"User-Agent": f"gate/{__version__}"},
        )

    async def due_at(self, workspace_id: str) -> int | None:
        """When the workspace's next undelivered event falls due (ms), None when drained."""
        k = keys.for_workspace(workspace_id)
        reply = await self.ctx.scripts.call(
            "outbox_window", [k.outbox, k.events, k.ended], ["", self.ctx.clock.now_ms(), 0, SCAN]
        )
        due = int(reply[1])
        return None if due < 0 else due

    async def rescan(self) -> None:
        """Put every workspace with undelivered events back in the index."""
        members = await self.ctx.client.smembers(keys.WORKSPACES)
        ids = sorted(text(m) for m in members)
        for i in range(0, len(ids), 100):
            chunk = ids[i : i + 100]
            dues = await asyncio.gather(*(self.due_at(ws) for ws in chunk))
            await self.index.notify_many(
                {ws: due for ws, due in zip(chunk, dues, strict=True) if due is not None}
            )

    # -- finding work --------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_claim = loop.time()

        async def one_round() -> None:
            nonlocal next_claim
            await self._take_dirty()
            if loop.time() >= next_claim:
                next_claim = loop.time() + self.poll_s
                await self._claim()

        while not self._stopping:
            self._wake.clear()
            if not await survive(log, "outbox round", one_round):
                continue
            await wait_for_wake(self._wake, next_claim - loop.time())

    async def _rescan_loop(self) -> None:
        while not self._stopping:
            await survive(log, "outbox rescan", self.rescan)
            await asyncio.sleep(self.rescan_s)

    async def _take_dirty(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        # The hint is for the others, due only after a lease: this process works on it now,
        # and if it dies before it settles the index, another one takes over then.
        due = self.ctx.clock.now_ms() + self.lease_ms
        try:
            await self.index.notify_many(dict.fromkeys(dirty, due))
        except BaseException:
            self._dirty |= dirty
            raise
        for workspace_id in dirty:
            self._run(workspace_id)

    async def _claim(self) -> None:
        free = self.max_workspaces - len(self._active)
        if free <= 0:
            return
        now = self.ctx.clock.now_ms()
        for workspace_id, _ in await self.index.claim(now, self.lease_ms, min(free, CLAIM)):
            self._run(workspace_id)

    def _run(self, workspace_id: str) -> None:
        if workspace_id in self._active:
            self._again.add(workspace_id)  # its task makes another pass before it ends
            return
        task = asyncio.create_task(self._work(workspace_id), name=f"gate-outbox-{workspace_id}")
        self._active[workspace_id] = task
        task.add_done_callback(partial(self._done, workspace_id))

    def _done(self, workspace_id: str, _task: asyncio.Task[None]) -> None:
        self._active.pop(workspace_id, None)
        if workspace_id in self._again and not self._stopping:
            self._again.discard(workspace_id)
            self._run(workspace_id)

    async def _work(self, workspace_id: str) -> None:
        try:
            while True:
                self._again.discard(workspace_id)
                due = await self._deliver(workspace_id)
                if due is LOST or self._stopping:
                    return  # the lease holder settles the index when it is done
                if workspace_id not in self._again:
                    break
            await self.index.settle(
                workspace_id,
                due if isinstance(due, int) else None,
                partial(self.due_at, workspace_id),
            )
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the index still holds the hint: retried after the lease
            if not is_unavailable(err):  # an outage is logged once, by the circuit
                log.exception("delivery of %s failed; retrying after the lease", workspace_id)

    # -- delivering one workspace --------------------------------------------------------

    async def _deliver(self, workspace_id: str) -> int | _Lost | None:
        """Send what is due now; returns when the rest falls due (None: nothing left)."""
        k = keys.for_workspace(workspace_id)
        now = self.ctx.clock.now_ms()
        reply = await self.ctx.scripts.call(
            "outbox_lease", [k.outbox], [self.owner, now, self.lease_ms]
        )
        if reply[0] != Code.OK:
            return LOST
        try:
            return await self._deliver_held(workspace_id, k)
        finally:
            try:
                await self.ctx.scripts.call("outbox_release", [k.outbox], [self.owner])
            except Exception as err:  # it runs out by itself after lease_ms
                if not is_unavailable(err):
                    log.exception("could not release the outbox lease of %s", workspace_id)

    async def _deliver_held(self, workspace_id: str, k: WsKeys) -> int | _Lost | None:
        # One snapshot of the URL and the newest event: with no URL, only the events that
        # were already there are skipped; one raised as a URL is being set waits for it.
        async with self.ctx.client.pipeline(transaction=True) as pipe:
            pipe.hmget(k.ws, ["switch_webhook_url", "webhook_secret"])
            pipe.xrevrange(k.events, "+", "-", count=1)
            record, newest = await pipe.execute()
        if record[1] is None:
            return None  # no such workspace (any more): nothing to deliver to
        settings = self.ctx.settings
        url = text(record[0]) if record[0] else settings.switch_webhook_url
        tenants = bool(record[0])  # the workspace's own URL, not the operator's
        routes = _Routes(
            url,
            # The service-wide switch URL may have the service's own secret (one switch, many
            # tenants): it cannot know every workspace's secret before parsing the body.
            Webhook(settings.switch_webhook_secret)
            if settings.switch_webhook_secret and not record[0]
            else Webhook(text(record[1])),
            settings.switch_webhook_events == "call",
            settings.events_webhook_url,
            Webhook(text(record[1])),
        )
        if not url and not routes.events_url:
            # Nobody to tell: the events stay in the stream for SSE and pulls.
            if len(self._quiet) > 100_000:
                self._quiet.clear()
            self._quiet[workspace_id] = time.monotonic() + QUIET_S
            if not newest:
                return None
            return None if await self._record(k, [], skip_to=text(newest[0][0])) else LOST
        while not self._stopping:
            flush = "1" if workspace_id in self._flush else ""
            self._flush.discard(workspace_id)
            reply = await self.ctx.scripts.call(
                "outbox_window",
                [k.outbox, k.events, k.ended],
                [self.owner, self.ctx.clock.now_ms(), self.in_flight, SCAN, flush],
            )
            if reply[0] != Code.OK:
                return LOST
            due = int(reply[1])
            items = reply[3:]
            if not items:
                return None if due < 0 else due
            outcomes = await asyncio.gather(
                *(
                    self._send(
                        *routes.of(items[i + 2]),
                        workspace_id,
                        text(items[i]),
                        int(items[i + 1]),
                        items[i + 2],
                        tenants=tenants,
                    )
                    for i in range(0, len(items), 3)
                )
            )
            if not await self._record(k, outcomes):
                return LOST
            # The receiver state follows the switch URL (the events URL when there is none);
            # with the two split, a recovered events receiver is noticed at its own retries.
            if target := url or routes.events_url:
                self._endpoint_outcomes(target, workspace_id, outcomes)
        return LOST  # stopping: whoever claims the workspace next settles it

    def _endpoint_outcomes(self, url: str, workspace_id: str, outcomes: Sequence[Outcome]) -> None:
        """Keep the receiver's state; when it answers again, send everything it missed now.

        Each failed event waits on its own back-off (live calls' cuts and limits at most
        live_retry_max_s), so the first to get through after an outage tells that the
        receiver is back: then every workspace waiting on it is delivered at once.
        """
        if len(self._endpoints) > 10_000:
            self._endpoints.clear()
        endpoint = self._endpoints.setdefault(url, _Endpoint())
        if any(o.outcome == "ok" for o in outcomes):
            if endpoint.failing_since is not None:
                log.warning(
                    "webhook receiver %s answers again after %.1f s; sending what it missed "
                    "(%d workspaces)",
                    _where(url),
                    time.monotonic() - endpoint.failing_since,
                    len(endpoint.waiting | {workspace_id}),
                )
                for waiting in endpoint.waiting | {workspace_id}:
                    self._flush.add(waiting)
                    if waiting != workspace_id:
                        self._run(waiting)
                endpoint.failing_since = None
                endpoint.waiting.clear()
        elif any(o.outcome == "retry" for o in outcomes):
            if endpoint.failing_since is None:
                endpoint.failing_since = time.monotonic()
                log.warning(
                    "webhook receiver %s does not answer (%s); retrying, live calls' cuts "
                    "and limits at least every %g s",
                    _where(url),
                    next(o.error for o in outcomes if o.outcome == "retry"),
                    self.live_retry_max_ms / 1000,
                )
            endpoint.waiting.add(workspace_id)

    async def _record(self, k: WsKeys, outcomes: Sequence[Outcome], *, skip_to: str = "") -> bool:
        args: list[str | int] = [
            self.owner,
            self.ctx.clock.now_ms(),
            self.lease_ms,
            skip_to,
        ]
        for o in outcomes:
            args += [o.entry_id, o.outcome, o.detail]
        reply = await self.ctx.scripts.call(
            "outbox_record", [k.outbox, k.events, k.deadletter], args
        )
        return bool(reply[0] == Code.OK)

    async def _send(
        self,
        url: str | None,
        webhook: Webhook,
        workspace_id: str,
        entry_id: str,
        attempts: int,
        flat: list[Any],
        *,
        tenants: bool = True,
    ) -> Outcome:
        if url is None:  # routed nowhere: it stays in the stream for SSE and pulls
            return Outcome(entry_id, "ok", "")
        fields = {text(k): text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
        try:
            event = events.render(workspace_id, entry_id, fields, self.ctx.clock.now_ms())
            at = events.at_ms(fields)
        except (KeyError, ValueError) as err:  # retrying cannot fix it: don't block the rest
            metrics.DELIVERIES.labels("dead").inc()
            log.error("event %s of %s is malformed: %r", entry_id, workspace_id, err)
            return Outcome(entry_id, "dead", f"{attempts} malformed event: {err!r}")
        body = orjson.dumps(event)
        # Receivers check webhook-timestamp against their own clock (5-minute tolerance), so it
        # is wall time even when tests drive ctx.clock.
        signed_at = datetime.fromtimestamp(int(time.time()), UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": event["id"],
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": webhook.sign(event["id"], signed_at, body.decode()),
        }
        sent_ms = self.ctx.clock.now_ms()
        assert self._session is not None, "start() the Outbox first"
        session = self._session if tenants else self._operator_session
        assert session is not None
        try:
            if tenants and not self.ctx.settings.webhook_allow_private:
                check_literal(url)  # and every address again by the session's connector
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
            error = f"HTTP {status}"
            delivered = 200 <= status < 300
        except TimeoutError:
            error, delivered = f"no answer within {self.timeout_s:g} s", False
        except (aiohttp.ClientError, OSError, ValueError) as err:
            error, delivered = f"{type(err).__name__}: {err}"[:300], False
        if delivered:
            metrics.DELIVERIES.labels("ok").inc()
            metrics.DELIVERY_DELAY.observe(max(sent_ms - at, 0) / 1000)
            return Outcome(entry_id, "ok", "")
        attempts += 1
        now = self.ctx.clock.now_ms()
        if now - at >= self.budget_ms:
            metrics.DELIVERIES.labels("dead").inc()
            log.warning(
                "giving up %s %s after %d attempts: %s", event["id"], event["type"], attempts, error
            )
            return Outcome(entry_id, "dead", f"{attempts} {error}")
        metrics.DELIVERIES.labels("retry").inc()
        live = event["type"] in LIVE_TYPES
        next_try = self._next_try(now, at, attempts, live)
        return Outcome(entry_id, "retry", f"{attempts}:{next_try}", error)

    def _next_try(self, now: int, at: int, attempts: int, live: bool = False) -> int:
        """Exponential backoff with jitter; the last try lands on the end of the budget.

        A live call's cut or limit backs off to live_retry_max_s at most: the switch must
        get it within seconds of its receiver coming back (outbox_window drops it once the
        call has ended).
        """
        longest = min(self.max_retry_ms, self.live_retry_max_ms) if live else self.max_retry_ms
        delay = min(self.first_retry_ms << min(attempts - 1, 40), longest)
        # Half fixed, half random: receivers coming back up are not hit by every gate at once.
        delay = delay // 2 + random.randint(0, delay - delay // 2)
        return min(now + max(delay, 1), at + self.budget_ms)

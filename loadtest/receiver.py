"""The switch's webhook endpoint: verifies every signature, de-duplicates, and hangs up on cuts."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gate.store.redis_proc import free_port
from loadtest.stats import histogram, record_us, summary_ms


@dataclass(frozen=True, slots=True)
class Cut:
    """A call.cut as received: the true moment the money ran out, and when we heard of it."""

    reason: str
    cut_at_ms: int
    received_ms: float


@dataclass(frozen=True, slots=True)
class Limit:
    """A call.limit: the longest the call may last (None when the limit was lifted)."""

    seq: int
    at_ms: int
    max_duration_s: int | None


@dataclass(frozen=True, slots=True)
class Grant:
    """Where the switch must now hang up (call.extended, or a call.limit that says so)."""

    seq: int
    hangup_at_ms: int
    limited: bool  # max_duration_s was set: the money runs out at hangup_at


OnCut = Callable[[str, str, Cut], None]
OnGrant = Callable[[str, str, Grant], None]


def _at_ms(iso: str) -> int:
    """Gate's event `at` ("2026-11-23T12:00:00.250Z") as unix milliseconds."""
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


class Receiver:
    """An aiohttp server on 127.0.0.1 with one URL per workspace: /hooks/<workspace id>."""

    def __init__(self, on_cut: OnCut, on_grant: OnGrant | None = None) -> None:
        self.on_cut = on_cut
        self.on_grant = on_grant
        self.secrets: dict[str, Webhook] = {}
        self.seen: set[str] = set()
        self.by_type: collections.Counter[str] = collections.Counter()
        self.received = 0
        self.duplicates = 0
        self.bad_signatures = 0
        self.malformed = 0
        self.early_cuts = 0  # cuts received before their cut_at: paid time taken away
        self.out_of_order = 0
        self.seqs: dict[str, set[int]] = collections.defaultdict(set)
        self.max_seq: dict[str, int] = {}
        self.cuts: dict[tuple[str, str], Cut] = {}
        self.limits: dict[tuple[str, str], list[Limit]] = collections.defaultdict(list)
        self.grants: dict[tuple[str, str], Grant] = {}  # the latest (by seq) of each call
        self.cut_delay = histogram()
        self.event_delay = histogram()
        # --auto-recharge-share: the crossing (wallet.auto_recharge_started, written by the
        # debiting script) to the credit (wallet.recharged), both at Gate's clock.
        self.recharge_delay = histogram()
        self._crossed_at: dict[str, int] = {}
        self.activity = asyncio.Event()  # set on every delivery: run.settle_webhooks waits on it
        self.port = 0
        self._runner: web.AppRunner | None = None

    def add_workspace(self, workspace_id: str, secret: str) -> str:
        """Trust `secret` for this workspace's events; returns the URL to give Gate."""
        self.secrets[workspace_id] = Webhook(secret)
        return f"http://127.0.0.1:{self.port}/hooks/{workspace_id}"

    async def start(self, port: int = 0) -> None:
        """Listen on `port` (0: a free one); --chaos takes it down and brings it back on it."""
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/hooks/{workspace_id}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self.port = port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        received_ms = time.time() * 1000
        self.activity.set()
        body = await request.read()
        workspace_id = request.match_info["workspace_id"]
        hook = self.secrets.get(workspace_id)
        if hook is None:
            self.bad_signatures += 1
            return web.Response(status=404, text="unknown workspace")
        try:
            hook.verify(body, dict(request.headers), json_parse=False)
        except (WebhookVerificationError, ValueError) as err:
            self.bad_signatures += 1
            return web.Response(status=400, text=f"bad signature: {err}")
        webhook_id = request.headers.get("webhook-id", "")
        self.received += 1
        if webhook_id in self.seen:
            self.duplicates += 1
            return web.Response(status=204)
        try:
            event = orjson.loads(body)
            self._dispatch(workspace_id, webhook_id, event, received_ms)
        except (KeyError, TypeError, ValueError):
            self.malformed += 1
            return web.Response(status=204)  # retrying would not fix it; counted instead
        self.seen.add(webhook_id)
        return web.Response(status=204)

    def _dispatch(
        self, workspace_id: str, webhook_id: str, event: dict[str, Any], received_ms: float
    ) -> None:
        if event["id"] != webhook_id or event["workspace_id"] != workspace_id:
            raise ValueError("event id or workspace does not match the delivery")
        kind = str(event["type"])
        seq = int(event["seq"])
        if seq < self.max_seq.get(workspace_id, 0):
            self.out_of_order += 1
        self.max_seq[workspace_id] = max(seq, self.max_seq.get(workspace_id, 0))
        self.seqs[workspace_id].add(seq)
        self.by_type[kind] += 1
        at_ms = _at_ms(str(event["at"]))
        record_us(self.event_delay, max(received_ms - at_ms, 0) * 1000)
        data = event["data"]
        if kind == "call.cut":
            cut = Cut(str(data["reason"]), int(data["cut_at_ms"]), received_ms)
            key = (workspace_id, str(data["call_id"]))
            self.cuts.setdefault(key, cut)
            if cut.reason != "stale":
                record_us(self.cut_delay, max(received_ms - cut.cut_at_ms, 0) * 1000)
                if received_ms < cut.cut_at_ms - 1:
                    self.early_cuts += 1
            self.on_cut(workspace_id, key[1], cut)
        elif kind == "call.limit":
            raw = data.get("max_duration_s")
            self.limits[(workspace_id, str(data["call_id"]))].append(
                Limit(seq, at_ms, None if raw in (None, "") else int(raw))
            )
            self._grant(workspace_id, data, seq)
        elif kind == "call.extended":
            self._grant(workspace_id, data, seq)
        elif kind == "wallet.auto_recharge_started":
            self._crossed_at.setdefault(workspace_id, at_ms)  # one attempt in flight at most
        elif kind == "wallet.recharged" and data.get("source") == "auto_recharge":
            crossed = self._crossed_at.pop(workspace_id, None)
            if crossed is not None:
                record_us(self.recharge_delay, max(at_ms - crossed, 0) * 1000)

    def _grant(self, workspace_id: str, data: dict[str, Any], seq: int) -> None:
        """A new hangup_at for the call (call.extended, call.limit): the latest seq wins."""
        at = data.get("hangup_at_ms")
        if at in (None, ""):
            return
        key = (workspace_id, str(data["call_id"]))
        old = self.grants.get(key)
        if old is not None and old.seq > seq:
            return
        grant = Grant(seq, int(at), data.get("max_duration_s") not in (None, ""))
        self.grants[key] = grant
        if self.on_grant is not None:
            self.on_grant(workspace_id, key[1], grant)

    def missing_seqs(self) -> int:
        """Sequence numbers never received between the first and last seen, per workspace."""
        return sum(max(s) - min(s) + 1 - len(s) for s in self.seqs.values() if s)

    def limit_at(self, workspace_id: str, call_id: str, before_ms: float) -> int | None:
        """The call's max_duration_s as last announced before `before_ms` (None: unlimited)."""
        current: int | None = None
        for limit in sorted(self.limits.get((workspace_id, call_id), ()), key=lambda x: x.seq):
            if limit.at_ms <= before_ms:
                current = limit.max_duration_s
        return current

    def report(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "unique": len(self.seen),
            "duplicates": self.duplicates,
            "signature_failures": self.bad_signatures,
            "malformed": self.malformed,
            "out_of_order": self.out_of_order,
            "early_cuts": self.early_cuts,
            "missing_seq": self.missing_seqs(),
            "by_type": dict(sorted(self.by_type.items())),
            "delay_ms": summary_ms(self.event_delay),
            "auto_recharge_delay_ms": summary_ms(self.recharge_delay),
        }

"""The ticker: bills every answered live call every tick_s and sends cuts at their cut time.

Due calls sit in per-workspace sorted sets; the global tick index (gate/store/due.py) says which
workspaces have due calls. Every gate process runs a ticker: it leases due workspaces,
runs call_tick on each (atomic: no call is billed twice), and settles the index. Polling
every `cut_poll_ms` (50 ms) bounds how late a cut can be; a notify from this process wakes
the loop at once.
"""

from __future__ import annotations

import asyncio
import logging
import math

from gate import metrics
from gate.context import Context
from gate.store import keys
from gate.store.circuit import is_unavailable
from gate.store.due import DueIndex
from gate.tasks import cancel, survive, wait_for_wake

log = logging.getLogger("gate.calls.ticker")

BATCH = 500  # calls per call_tick run: bounds how long one script blocks Redis
CLAIM = 100  # workspaces per claim
LEASE_MS = 10_000
RESCAN_S = 30.0  # how often the whole index is rebuilt from the workspaces' own schedules


class Ticker:
    def __init__(self, ctx: Context, *, poll_ms: int | None = None) -> None:
        self.ctx = ctx
        self.index = DueIndex(ctx.scripts, keys.TICK_INDEX)
        self.poll_s = (poll_ms or ctx.settings.cut_poll_ms) / 1000
        self._hints: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.ticks = 0  # calls handled, for tests and logs
        # A Redis outage refuses the switches' heartbeats and syncs: their silence then is
        # Gate's, not theirs. The first failed round's time (clock ms) while it lasts; for one
        # stale window after it, its length is added to GATE_STALE_AFTER_S.
        self.down_since_ms: int | None = None
        self._forgive_s = 0
        self._forgive_until_ms = 0
        self._stale_after_s = ctx.settings.stale_after_s

    def notify(self, workspace_id: str, due_ms: int) -> None:
        """A call of this workspace is due at due_ms: remember it for the next flush."""
        old = self._hints.get(workspace_id)
        if old is None or due_ms < old:
            self._hints[workspace_id] = due_ms
        if due_ms <= self.ctx.clock.now_ms() + int(self.poll_s * 1000):
            self._wake.set()

    async def flush(self) -> None:
        """Write the remembered hints to the global index in one command."""
        if self._hints:
            hints, self._hints = self._hints, {}
            await self.index.notify_many(hints)

    async def run_once(self) -> int:
        """Tick every workspace that is due now; returns how many calls were handled."""
        await self.flush()
        handled = 0
        now = self.ctx.clock.now_ms()
        while True:
            claimed = await self.index.claim(now, LEASE_MS, CLAIM)
            # Redis answered (it is back, if it was away); the claim may have waited out an
            # outage, so the window is measured from the clock now, not the round's start.
            self._stale_after_s = self._stale_window(self.ctx.clock.now_ms())
            if not claimed:
                return handled
            results = await asyncio.gather(*(self._tick(ws) for ws, _ in claimed))
            handled += sum(results)
            if len(claimed) < CLAIM:
                return handled

    async def _tick(self, workspace_id: str) -> int:
        k = keys.for_workspace(workspace_id)
        handled = 0
        next_due: int | None = None
        while True:
            now = self.ctx.clock.now_ms()
            # A Redis outage refused the switch's evidence: forgiven for both windows alike.
            forgive_s = self._stale_after_s - self.ctx.settings.stale_after_s
            evidence_s = self.ctx.settings.evidence_max_s + forgive_s
            reply = await self.ctx.scripts.call(
                "call_tick", k.call_keys, [now, BATCH, self._stale_after_s, evidence_s]
            )
            count, next_ms, events = int(reply[1]), int(reply[2]), int(reply[4])
            for lag in reply[5:]:
                metrics.TICKER_LAG.observe(max(int(lag), 0) / 1000)
            handled += count
            if events:
                self.ctx.notifier.events(workspace_id)
            next_due = None if next_ms < 0 else next_ms
            if count < BATCH or next_due is None or next_due > now:
                break
        self.ticks += handled

        async def head() -> int | None:
            first = await self.ctx.client.zrange(k.due, 0, 0, withscores=True)
            return int(first[0][1]) if first else None

        await self.index.settle(workspace_id, next_due, head)
        return handled

    def _stale_window(self, now_ms: int) -> int:
        """GATE_STALE_AFTER_S, plus the last outage's length for one window after it."""
        base = self.ctx.settings.stale_after_s
        if self.down_since_ms is not None:  # the first round since Redis came back
            self._forgive_s = math.ceil(max(now_ms - self.down_since_ms, 0) / 1000)
            self._forgive_until_ms = now_ms + base * 1000
            self.down_since_ms = None
            if self._forgive_s > 1:  # an outage, not one command timed out by a stalled loop
                log.warning(
                    "stale sweeps allow %d s more for %d s: Redis was away", self._forgive_s, base
                )
        return base + self._forgive_s if now_ms < self._forgive_until_ms else base

    async def rescan(self) -> None:
        """Rebuild hints from every workspace's own schedule (after a crash lost some)."""
        members = await self.ctx.client.smembers(keys.WORKSPACES)
        for raw in members:
            workspace_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            first = await self.ctx.client.zrange(
                keys.for_workspace(workspace_id).due, 0, 0, withscores=True
            )
            if first:
                self.notify(workspace_id, int(first[0][1]))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_rescan = loop.time()

        async def one_round() -> None:
            nonlocal next_rescan
            try:
                if loop.time() >= next_rescan:
                    await self.rescan()
                    next_rescan = loop.time() + RESCAN_S
                await self.run_once()
            except Exception as err:
                if is_unavailable(err) and self.down_since_ms is None:
                    self.down_since_ms = self.ctx.clock.now_ms()
                raise

        while not self._stopping:
            if not await survive(log, "ticker round", one_round):
                continue
            self._wake.clear()
            await wait_for_wake(self._wake, self.poll_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="gate-ticker")

    async def stop(self) -> None:
        # The flag as well as the cancel: a cancel that lands inside a Redis call can be
        # absorbed by the client, and the loop must still end.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await cancel([self._task])
            self._task = None
        await self.flush()

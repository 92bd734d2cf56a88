"""The archiver: copies every ledger row from Redis into the SQL archive, then trims Redis.

One pass, per workspace: read the rows after the archive's cursor (XRANGE), insert them and
move the cursor in one SQL transaction, and only after that commit trim the stream
(lua/ledger_trim-1.lua) down to the recent window (`GATE_LEDGER_KEEP_S`,
`GATE_LEDGER_KEEP_ROWS`). A crash anywhere leaves either the rows uncommitted (read again
next pass) or committed but still in Redis (the primary key skips them next pass): never
lost, never doubled. One process at a time holds the archiver lease (a Redis key renewed
each pass); the lease only saves work, correctness does not depend on it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from gate import metrics
from gate.context import Context
from gate.errors import ArchiveUnavailable
from gate.history import alerts, audit
from gate.history.archive import Archive, Cursor
from gate.history.ledger import Row
from gate.store import keys
from gate.store.redis_client import entries, text
from gate.tasks import cancel, wait_for_wake

log = logging.getLogger("gate.history.archiver")
LEASE_KEY = f"{keys.PREFIX}:archiver:lease"
_QUIET_TRIM_EVERY = 30  # passes


@dataclass(frozen=True, slots=True)
class Pass:
    """What one pass did, and the lag it found as it began."""

    copied: int
    trimmed: int
    lag_rows: int
    lag_s: float


@dataclass(slots=True)
class Status:
    """The last pass, for /readyz."""

    passes: int = 0
    last_pass_ms: int | None = None
    lag_rows: int = 0
    lag_s: float = 0.0
    error: str | None = None


class Archiver:
    def __init__(self, ctx: Context, archive: Archive, batch: int = 2000) -> None:
        self.ctx = ctx
        self.archive = archive
        self.batch = batch
        self.token = secrets.token_hex(8)
        self.status = Status()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="gate-archiver")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await cancel([self._task])
            self._task = None
        # Hand the lease over at once rather than after it lapses.
        if await self.ctx.client.get(LEASE_KEY) == self.token.encode():
            await self.ctx.client.delete(LEASE_KEY)

    async def _run(self) -> None:
        interval = self.ctx.settings.archive_interval_s
        while not self._stop.is_set():
            await wait_for_wake(self._stop, interval)
            if self._stop.is_set():
                return
            try:
                if await self._lease(int(interval * 5000) + 10_000):
                    await self.run_once()
                self.status.error = None
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the database or Redis is away: retry next pass
                error = f"{type(err).__name__}: {err}"
                # one line per outage: the archive logs its own (ArchiveUnavailable), and
                # another failure is logged when it starts or changes, not every pass
                if not isinstance(err, ArchiveUnavailable) and error != self.status.error:
                    log.warning("archive pass failed, retrying: %s", error)
                self.status.error = error

    async def _lease(self, lease_ms: int) -> bool:
        client = self.ctx.client
        if await client.set(LEASE_KEY, self.token, nx=True, px=lease_ms):
            return True
        if await client.get(LEASE_KEY) == self.token.encode():
            await client.pexpire(LEASE_KEY, lease_ms)
            return True
        return False

    async def run_once(self) -> Pass:
        """Archive every workspace's new rows and trim what is safe; returns what it did."""
        client = self.ctx.client
        now_ms = self.ctx.clock.now_ms()
        workspace_ids = sorted(text(m) for m in await client.smembers(keys.WORKSPACES))
        cursors = await self.archive.cursors()
        copied = trimmed = lag_rows = 0
        oldest_ms: int | None = None
        for owner in [*workspace_ids, None]:  # None: the platform's own audit log
            await self._audit(owner)
        for workspace_id in workspace_ids:
            done, removed, waiting, first_ms = await self._workspace(
                workspace_id, cursors.get(workspace_id), now_ms
            )
            copied += done
            trimmed += removed
            lag_rows += waiting
            if first_ms is not None and (oldest_ms is None or first_ms < oldest_ms):
                oldest_ms = first_ms
        lag_s = 0.0 if oldest_ms is None else max(now_ms - oldest_ms, 0) / 1000
        metrics.ARCHIVE_LAG_ROWS.set(lag_rows)
        metrics.ARCHIVE_LAG_SECONDS.set(lag_s)
        metrics.ARCHIVED_ROWS.inc(copied)
        self.status.passes += 1
        self.status.last_pass_ms = now_ms
        self.status.lag_rows = lag_rows
        self.status.lag_s = lag_s
        return Pass(copied, trimmed, lag_rows, lag_s)

    async def _audit(self, workspace_id: str | None) -> int:
        """Copy a workspace's new audit entries to SQL. The Redis stream is kept whole: the
        audit API reads it there (entries are few next to ledger rows)."""
        owner = workspace_id or "platform"
        after = await self.archive.audit_cursor(owner)
        stream = audit.stream_of(workspace_id)
        copied = 0
        while True:
            low = f"({after}" if after else "-"
            batch = entries(await self.ctx.client.xrange(stream, low, "+", count=self.batch))
            if not batch:
                return copied
            found = [audit.Entry.parse(owner, i, raw) for i, raw in batch]
            copied += await self.archive.append_audit(owner, [e.record() for e in found])
            after = found[-1].id
            if len(batch) < self.batch:
                return copied

    async def _workspace(
        self, workspace_id: str, cursor: Cursor | None, now_ms: int
    ) -> tuple[int, int, int, int | None]:
        """(rows copied, rows trimmed, rows waiting as it began, at of the first waiting)."""
        stream = keys.for_workspace(workspace_id).ledger
        after = cursor.row_id if cursor else None
        copied = waiting = 0
        first_ms: int | None = None
        while True:
            low = f"({after}" if after else "-"
            batch = entries(await self.ctx.client.xrange(stream, low, "+", count=self.batch))
            if not batch:
                break
            rows = [Row.parse(entry_id, raw) for entry_id, raw in batch]
            if first_ms is None:
                first_ms = rows[0].at_ms
            waiting += len(rows)
            copied += await self.archive.append(workspace_id, rows, now_ms)
            after = rows[-1].id
            if len(batch) < self.batch:
                break
        if after is None:
            return 0, 0, 0, None
        if copied:
            try:  # spending changed: budget thresholds and spikes (gate.history.alerts)
                await alerts.check(self.ctx, workspace_id)
            except Exception as err:  # an alert must never stop the archive
                log.warning("spending alerts of %s not checked: %r", workspace_id, err)
        # Archived rows also age out of the time window with no new rows: trim those now and
        # then, not on every pass of every quiet workspace.
        if not copied and self.status.passes % _QUIET_TRIM_EVERY:
            return 0, 0, waiting, first_ms
        settings = self.ctx.settings
        reply = await self.ctx.scripts.call(
            "ledger_trim",
            [stream],
            [after, now_ms - settings.ledger_keep_s * 1000, settings.ledger_keep_rows],
        )
        return copied, int(reply[1]), waiting, first_ms

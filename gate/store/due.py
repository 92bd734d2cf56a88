"""Global due indexes: which workspaces have work due (ticks, cuts, event deliveries).

Each workspace keeps its own schedule in its own slot; a global sorted set (workspace id ->
earliest due ms) lets any gate process find due workspaces without scanning. Scripts can't
write it (another slot on a cluster), so it is a hint kept by this protocol:
- after a script adds work, `notify_many` lowers the workspace's score (ZADD LT);
- `claim` leases due workspaces atomically (score moves to now + lease), so several
  processes never work on one workspace at once and a dead claimer's work comes back;
- after the work, `settle` sets the exact next due time, then re-reads the workspace's own
  schedule and lowers the score again, so a `notify_many` that raced with the settle is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gate.store.scripts import Scripts


class DueIndex:
    def __init__(self, scripts: Scripts, key: str) -> None:
        self.scripts = scripts
        self.key = key

    async def notify_many(self, due: dict[str, int]) -> None:
        if due:
            await self.scripts.client.zadd(self.key, due, lt=True)

    async def claim(self, now_ms: int, lease_ms: int, limit: int) -> list[tuple[str, int]]:
        """Lease up to `limit` due workspaces: [(workspace id, the due ms it had)]."""
        reply = await self.scripts.call("due_claim", [self.key], [now_ms, lease_ms, limit])
        items = reply[1:]
        return [(items[i].decode(), int(float(items[i + 1]))) for i in range(0, len(items), 2)]

    async def settle(
        self,
        workspace_id: str,
        next_ms: int | None,
        head: Callable[[], Awaitable[int | None]],
    ) -> None:
        """Record the workspace's next due time (None: nothing left), race-free with notify.

        `head` reads the earliest due time from the workspace's own schedule.
        """
        client = self.scripts.client
        if next_ms is None:
            await client.zrem(self.key, workspace_id)
        else:
            await client.zadd(self.key, {workspace_id: next_ms})
        current = await head()
        if current is not None and (next_ms is None or current < next_ms):
            await client.zadd(self.key, {workspace_id: current}, lt=True)

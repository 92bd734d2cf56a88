"""What every domain service needs: Redis, the script registry, the clock and the settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import Redis, RedisCluster

from gate.clock import Clock
from gate.settings import Settings
from gate.store.scripts import Scripts

if TYPE_CHECKING:
    from gate.history.archive import Archive


class Notifier:
    """Tells background workers of this process that a workspace has new work.

    Domain code calls these after a script that wrote events or scheduled calls; the outbox,
    the automation worker and the ticker subscribe when they start. Both methods return at
    once.
    """

    def events(self, workspace_id: str, *, outbox: bool = True, automation: bool = True) -> None:
        """The workspace's event stream has new entries.

        A caller that knows better says which workers have work: `outbox=False` when the
        events have nowhere to go (no webhook URL; the outbox's rescan moves its cursor past
        them), `automation=False` when the script's wallet watch started no recharge and
        queued no mail (lua/_watch.lua); the workers' rescans find anything missed.
        """
        if outbox and self.on_events is not None:
            self.on_events(workspace_id)
        if automation and self.on_automation is not None:
            self.on_automation(workspace_id)

    def ticks(self, workspace_id: str, due_ms: int) -> None:
        """A call of the workspace is due at `due_ms` (or earlier than scheduled before)."""
        if self.on_ticks is not None:
            self.on_ticks(workspace_id, due_ms)

    def __init__(self) -> None:
        self.on_events: Callable[[str], None] | None = None  # the outbox
        self.on_automation: Callable[[str], None] | None = None  # the automation worker
        self.on_ticks: Callable[[str, int], None] | None = None


@dataclass(frozen=True, slots=True)
class Context:
    client: Redis | RedisCluster
    scripts: Scripts
    clock: Clock
    settings: Settings
    notifier: Notifier = field(default_factory=Notifier)
    archive: Archive | None = None  # the SQL ledger archive, when GATE_DATABASE_URL is set

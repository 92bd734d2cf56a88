"""Webhook delivery of the event outbox (being built: see the live-call gate issue)."""

from __future__ import annotations

from gate.context import Context


class Outbox:
    """Delivers each workspace's events to its switch webhook, signed, at least once."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def notify(self, workspace_id: str) -> None:
        """New events in this workspace's stream: deliver soon. Returns at once."""

    async def start(self) -> None:
        """Start the background delivery tasks."""

    async def stop(self) -> None:
        """Stop them; undelivered events stay in Redis for the next start."""

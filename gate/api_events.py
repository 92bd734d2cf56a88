"""Server-Sent Events: the workspace's events, live and resumable with Last-Event-ID."""

from __future__ import annotations

from aiohttp import web

from gate.errors import NotFound


async def stream(request: web.Request) -> web.StreamResponse:
    raise NotFound("event streaming is being built")

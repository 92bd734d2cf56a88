"""Helpers for the background loops (ticker, outbox): waiting and stopping that never hang."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence


async def cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel tasks until they have ended.

    Python 3.11's asyncio.wait_for, which redis-py uses around socket writes, drops a cancel
    that lands as the write completes; the loops also check a stop flag, so one more cancel
    always ends them.
    """
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.05)
    await asyncio.gather(*tasks, return_exceptions=True)


async def wait_for_wake(wake: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, or less if `wake` is set.

    asyncio.timeout rather than wait_for: on 3.11 wait_for can swallow a cancel that lands
    as the event fires.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(seconds, 0)):
            await wake.wait()

"""Helpers for the background loops (ticker, outbox, automation, renewals): one round that
survives errors, and waiting and stopping that never hang."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from gate.store.circuit import is_unavailable

OUTAGE_PAUSE_S = 0.25  # while Redis is unreachable: cheap, the circuit fails fast
ERROR_PAUSE_S = 1.0


async def survive(log: logging.Logger, what: str, step: Callable[[], Awaitable[object]]) -> bool:
    """Run one round of a background loop; True when it ran through.

    On an error the loop must go on: a Redis outage (which the circuit logs once, when it opens)
    pauses briefly and quietly; anything else logs its traceback and pauses a second.
    """
    try:
        await step()
    except asyncio.CancelledError:
        raise
    except Exception as err:
        if is_unavailable(err):
            await asyncio.sleep(OUTAGE_PAUSE_S)
        else:
            log.exception("%s failed; retrying", what)
            await asyncio.sleep(ERROR_PAUSE_S)
        return False
    return True


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


class Every:
    """A background loop that runs `step` every `every_s` seconds, surviving its errors:
    every process runs one; leases in `step` keep the processes off each other's work."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        step: Callable[[], Awaitable[object]],
        every_s: float,
    ) -> None:
        self.log, self.what, self.step, self.every_s = log, what, step, every_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"gate-{self.what}")

    async def _loop(self) -> None:
        while not self._stopping:
            await survive(self.log, self.what, self.step)  # the lease brings work back
            await wait_for_wake(self._wake, self.every_s)
            self._wake.clear()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        await cancel([self._task] if self._task else [])

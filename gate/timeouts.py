"""Deadlines for the hot path that share one loop timer instead of arming one each.

`asyncio.timeout()` arms `loop.call_at` on every use; under uvloop that is a libuv timer,
about 5 µs to arm and cancel on this machine (py-spy: 4-9 % of the event-loop thread while
serving starts), and a call start armed two of them besides its batch's. These deadlines
keep a heap per event loop with one armed loop timer for the earliest: arming one is a
heappush (later deadlines, the usual case, leave the armed timer alone), and one cancelled
early is dropped when it comes due. They behave as `asyncio.timeout()` does: at expiry
the task is cancelled and the block raises TimeoutError, unless the task was also
cancelled from outside, which then propagates.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import weakref
from types import TracebackType

__all__ = ["Deadline", "timeout", "timeout_at"]

# uvloop's clock and timers run in whole milliseconds: a timer may fire up to one early.
_SLACK_S = 0.001


class _Entry:
    __slots__ = ("deadline", "seq", "when")

    def __init__(self, when: float, seq: int, deadline: Deadline) -> None:
        self.when = when
        self.seq = seq
        self.deadline: Deadline | None = deadline  # None: cancelled, drop when popped

    def __lt__(self, other: _Entry) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class _Timers:
    """One event loop's deadlines: a heap, and one loop timer armed for the earliest."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[_Entry] = []
        self.seq = itertools.count()
        self.armed: asyncio.TimerHandle | None = None
        self.armed_at = math.inf

    def add(self, when: float, deadline: Deadline) -> _Entry:
        entry = _Entry(when, next(self.seq), deadline)
        heapq.heappush(self.heap, entry)
        if when < self.armed_at:
            self._arm(when)
        return entry

    def _arm(self, when: float) -> None:
        if self.armed is not None:
            self.armed.cancel()
        self.armed_at = when
        self.armed = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.armed, self.armed_at = None, math.inf
        now = self.loop.time() + _SLACK_S
        heap = self.heap
        due: list[Deadline] = []
        while heap and (heap[0].deadline is None or heap[0].when <= now):
            deadline = heapq.heappop(heap).deadline
            if deadline is not None:
                due.append(deadline)
        if heap:
            self._arm(heap[0].when)
        for deadline in due:
            deadline._expire()


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Timers] = weakref.WeakKeyDictionary()


def _timers(loop: asyncio.AbstractEventLoop) -> _Timers:
    timers = _loops.get(loop)
    if timers is None:
        timers = _loops[loop] = _Timers(loop)
    return timers


class Deadline:
    """An `async with` block's deadline in loop time (None: none); see the module doc."""

    __slots__ = ("_cancelling", "_entry", "_expired", "_task", "_when")

    def __init__(self, when: float | None) -> None:
        self._when = when
        self._task: asyncio.Task[object] | None = None
        self._entry: _Entry | None = None
        self._expired = False
        self._cancelling = 0

    def when(self) -> float | None:
        return self._when

    def expired(self) -> bool:
        return self._expired

    def reschedule(self, when: float | None) -> None:
        """Move the deadline (None: none), as asyncio.Timeout.reschedule."""
        if self._task is None:
            raise RuntimeError("the deadline has not been entered")
        self._when = when
        self._drop()
        if when is not None and not self._expired:
            self._entry = _timers(self._task.get_loop()).add(when, self)

    def _drop(self) -> None:
        if self._entry is not None:
            self._entry.deadline = None
            self._entry = None

    def _expire(self) -> None:
        self._entry = None
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self.reschedule(self._when)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._drop()
        if self._expired:
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


def timeout(delay: float | None) -> Deadline:
    """Like asyncio.timeout(delay): a deadline `delay` seconds from now."""
    if delay is None:
        return Deadline(None)
    return Deadline(asyncio.get_running_loop().time() + delay)


def timeout_at(when: float | None) -> Deadline:
    """Like asyncio.timeout_at(when): a deadline at loop time `when`."""
    return Deadline(when)

"""The one injectable clock: every time that enters a Lua script comes from here."""

from __future__ import annotations

import calendar
import time
from datetime import date
from typing import Protocol


def month_day(year: int, month: int, day: int) -> date:
    """Day `day` of a month, clamped to the month's last (31 in February is the 28th or
    29th); `month` may run past 1..12 (0 is the December before, 13 the January after)."""
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    """Wall-clock milliseconds since the epoch, moved by `skew_ms` (GATE_CLOCK_SKEW_MS).

    The skew is a test and chaos knob only (`loadtest --chaos` runs a second Gate 2 s off the
    first, as two hosts whose clocks disagree): a real host keeps its clock with NTP.
    """

    def __init__(self, skew_ms: int = 0) -> None:
        self.skew_ms = skew_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.skew_ms


class ManualClock:
    """A clock tests move by hand, so an hour-long call takes milliseconds."""

    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.ms = start_ms

    def now_ms(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)

"""Per-key rate limits on the routes that change things: a token bucket per key, per process.

A key may make `rate` mutating requests a second on average, `burst` at once; beyond that
it gets `429 rate_limited` with `Retry-After`. Reads, the platform key and the platform's
switch keys are not limited here (call routes are bounded by `max_concurrent_calls`, and a
switch carrying many calls legitimately sends thousands of requests a second). The buckets
live in each process: with GATE_WORKERS=N a key may get up to N times the rate, and no
Redis round trip is added to any request.
"""

from __future__ import annotations

import math
import time

from gate.errors import RateLimited

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class KeyLimiter:
    """Token buckets by key id; `rate` <= 0 turns limiting off."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, key_id: str, now: float | None = None) -> None:
        """Spend one token of the key's bucket, or raise RateLimited saying when to retry."""
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            wait_s = math.ceil((1.0 - tokens) / self.rate)
            raise RateLimited(
                f"this key made more than {self.rate:g} changes a second (bursts of "
                f"{self.burst}); retry after {wait_s} s, or spread the requests out",
                retry_after_s=wait_s,
            )
        if len(self._buckets) >= self.max_keys and key_id not in self._buckets:
            self._buckets.clear()  # forgetting full buckets only ever lets a key do more
        self._buckets[key_id] = (tokens - 1.0, now)

"""Latency histograms (HdrHistogram), per-second timelines, error counts and /metrics parsing."""

from __future__ import annotations

import collections
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtest.wire import Client, WireError

ROUTES = ("call_start", "call_end", "heartbeat", "topup", "adjustment", "wallet")
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))
_MAX_US = 120_000_000  # two minutes: anything slower is recorded as two minutes


def histogram() -> HdrHistogram:
    """Microseconds from 1 µs to two minutes, three significant digits."""
    return HdrHistogram(1, _MAX_US, 3)


def record_us(h: HdrHistogram, us: float) -> None:
    h.record_value(min(max(int(us), 1), _MAX_US))


def summary_ms(h: HdrHistogram) -> dict[str, Any]:
    """count, mean, p50/p90/p99/p99.9 and max in milliseconds (None when empty)."""
    count = h.get_total_count()
    out: dict[str, Any] = {"count": count}
    for name, pct in PERCENTILES:
        out[name] = round(h.get_value_at_percentile(pct) / 1000, 3) if count else None
    out["max"] = round(h.get_max_value() / 1000, 3) if count else None
    out["mean"] = round(h.get_mean_value() / 1000, 3) if count else None
    return out


@dataclass
class Second:
    """What happened during one second of the run."""

    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: int = 0
    starts: int = 0
    latency: HdrHistogram = field(default_factory=histogram)
    start_latency: HdrHistogram = field(default_factory=histogram)
    live: int = 0


class Recorder:
    """Everything the client measured: per-route histograms, per-second series, errors."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.routes: dict[str, HdrHistogram] = {r: histogram() for r in ROUTES}
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.refusals: collections.Counter[str] = collections.Counter()
        self.seconds: list[Second] = []

    def second(self) -> Second:
        index = int(time.monotonic() - self.t0)
        while len(self.seconds) <= index:
            self.seconds.append(Second())
        return self.seconds[index]

    def ok(self, route: str, us: float) -> None:
        self.counts[route] += 1
        record_us(self.routes.setdefault(route, histogram()), us)
        sec = self.second()
        sec.requests[route] += 1
        record_us(sec.latency, us)
        if route == "call_start":
            record_us(sec.start_latency, us)

    def started(self) -> None:
        self.second().starts += 1

    def refused(self, route: str, status: int, code: str, us: float) -> None:
        """An answer the API promises (402, 429): timed like a success, counted apart."""
        self.ok(route, us)
        self.refusals[f"{route} {status} {code}"] += 1

    def error(self, route: str, status: int, code: str) -> None:
        self.errors[f"{route} {status} {code}"] += 1
        self.second().errors += 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def p99_ms(self, route: str) -> float | None:
        h = self.routes.get(route)
        if h is None or not h.get_total_count():
            return None
        return float(h.get_value_at_percentile(99.0)) / 1000

    def latency_ms(self) -> dict[str, Any]:
        return {r: summary_ms(h) for r, h in self.routes.items() if h.get_total_count()}

    def timeline(self) -> list[dict[str, Any]]:
        rows = []
        for i, sec in enumerate(self.seconds):
            n = sec.latency.get_total_count()
            s = sec.start_latency.get_total_count()
            rows.append(
                {
                    "t": i,
                    "requests": sum(sec.requests.values()),
                    "by_route": dict(sec.requests),
                    "starts": sec.starts,
                    "errors": sec.errors,
                    "live": sec.live,
                    "p50_ms": sec.latency.get_value_at_percentile(50.0) / 1000 if n else None,
                    "p99_ms": sec.latency.get_value_at_percentile(99.0) / 1000 if n else None,
                    "start_p99_ms": (
                        sec.start_latency.get_value_at_percentile(99.0) / 1000 if s else None
                    ),
                }
            )
        return rows


# --- Prometheus text -------------------------------------------------------------------


async def scrape(client: Client) -> str:
    """Gate's /metrics text ('' when it cannot be read: the figures are then missing)."""
    try:
        resp = await client.request("GET", "/metrics")
    except (WireError, TimeoutError):
        return ""
    return resp.body.decode(errors="replace") if resp.status == 200 else ""


_BUCKET = re.compile(r"^(?P<name>[a-z_]+)_bucket\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LE = re.compile(r'le="(?P<le>[^"]+)"')


_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def samples(text: str, metric: str) -> dict[str, float]:
    """The samples of one labelled metric, keyed by their label text (e.g. counters)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is not None and m["name"] == metric:
            out[m["labels"]] = float(m["value"])
    return out


def buckets(text: str, metric: str) -> dict[float, float]:
    """Cumulative bucket counts of one histogram (labels other than `le` summed)."""
    out: dict[float, float] = collections.defaultdict(float)
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if m is None or m["name"] != metric:
            continue
        le = _LE.search(m["labels"])
        if le is None:
            continue
        out[math.inf if le["le"] == "+Inf" else float(le["le"])] += float(m["value"])
    return dict(out)


def bucket_summary_ms(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """p50/p99 of what was observed between two scrapes, as bucket upper bounds (ms)."""
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    total = delta.get(math.inf, 0.0)
    out: dict[str, Any] = {"count": int(total), "method": "upper bound of the Prometheus bucket"}
    for name, pct in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0)):
        value: float | None = None
        if total > 0:
            for le in sorted(delta):
                if delta[le] >= total * pct / 100:
                    value = le
                    break
        if value is None:
            out[name] = None
        elif math.isinf(value):
            finite = [le for le in delta if not math.isinf(le)]
            out[name] = None
            out[f"{name}_above_ms"] = max(finite) * 1000 if finite else None
        else:
            out[name] = round(value * 1000, 3)
    return out

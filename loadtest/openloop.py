"""Open-loop latency: call starts sent on a fixed schedule, whatever the answers do.

Like wrk2, a request's latency runs from the moment the schedule said to send it, not from
when a free connection let it go: a stalled Gate then shows up as the queue it causes
instead of slowing the sender down (no coordinated omission). Each started call is held
`hold_s` and ended, its end timed the same way from its own scheduled moment.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import orjson

from loadtest.api import bearer
from loadtest.cost import FROM, TO, RedisStats, Target, redis_stats
from loadtest.procs import cpu_seconds
from loadtest.stats import histogram, record_us, summary_ms
from loadtest.wire import Client, WireError

CONNECTIONS = 256  # enough that the client's own pool never becomes the queue it measures


async def warm(client: Client, n: int) -> None:
    """Open `n` keep-alive connections before the schedule starts, as wrk2 does: a burst
    of new connections overflows the listen backlog, and a dropped SYN is retried after a
    whole second, which would show up as the server's latency."""
    await asyncio.gather(*(client.request("GET", "/healthz") for _ in range(n)))


async def run(
    target: Target, rate: float, seconds: float, hold_s: float, label: str
) -> dict[str, Any]:
    """Start calls at `rate` per second for `seconds`; p50/p99/p99.9 from the schedule."""
    loop = asyncio.get_running_loop()
    client = Client("127.0.0.1", target.gate.port, limit=CONNECTIONS, timeout_s=10)
    starts, ends = histogram(), histogram()
    errors: collections.Counter[str] = collections.Counter()
    tasks: set[asyncio.Task[None]] = set()
    wallets = target.wallets
    late = 0

    async def one(i: int, scheduled: float) -> None:
        wb = wallets[i % len(wallets)]
        call_id = f"ol-{label}-{i}"
        key = bearer(wb.switch_key)
        body = {"call_id": call_id, "direction": "outbound", "from": FROM, "to": TO}
        raw = client.encode("POST", "/v1/calls", orjson.dumps(body), key)
        try:
            resp = await client.send(raw)
        except (WireError, TimeoutError):
            errors["start: no answer"] += 1
            return
        record_us(starts, (time.perf_counter() - scheduled) * 1e6)
        if resp.status != 201:
            errors[f"start {resp.status}"] += 1
            return
        end_at = time.perf_counter() + hold_s
        await asyncio.sleep(hold_s)
        end = orjson.dumps({"duration_s": int(hold_s)})
        try:
            resp = await client.send(client.encode("POST", f"/v1/calls/{call_id}/end", end, key))
        except (WireError, TimeoutError):
            errors["end: no answer"] += 1
            return
        record_us(ends, (time.perf_counter() - end_at) * 1e6)
        if resp.status != 200:
            errors[f"end {resp.status}"] += 1

    await warm(client, CONNECTIONS)
    # perf_counter, not loop.time(): uvloop's clock is libuv's, in whole milliseconds and
    # read once per loop iteration, too coarse for a p50 of about a millisecond.
    cpu0, stats0 = cpu_seconds(target.gate.pid), await redis_stats(target.redis)
    t0 = time.perf_counter() + 0.05
    total = int(rate * seconds)
    sent = 0
    while sent < total:
        now = time.perf_counter()
        # Everything whose moment has come goes now (the sleep below wakes late at times).
        while sent < total and t0 + sent / rate <= now:
            task = loop.create_task(one(sent, t0 + sent / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if sent < total:
            wait = t0 + sent / rate - time.perf_counter()
            if wait < -0.001:
                late += 1
            await asyncio.sleep(max(wait, 0))
    window = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    cpu1, stats1 = cpu_seconds(target.gate.pid), await redis_stats(target.redis)
    await client.close()
    used: RedisStats = stats1.minus(stats0)
    span = max(time.perf_counter() - t0, 1e-9)
    start, stop = summary_ms(starts), summary_ms(ends)
    return {
        "label": label,
        "build": target.name,
        "arrival_rate": rate,
        "seconds": round(window, 2),
        "starts": start["count"],
        "errors": dict(errors),
        "start_ms": {k: start[k] for k in ("p50", "p99", "p99_9", "max")},
        "end_ms": {k: stop[k] for k in ("p50", "p99", "p99_9", "max")},
        "gate_cores": round((cpu1["gate"] - cpu0["gate"]) / span, 2),
        "redis_cores": round((cpu1["redis"] - cpu0["redis"]) / span, 2),
        "redis_info_cpu_s": round(used.cpu_s, 2),
        "scheduler_wakeups_late": late,
    }

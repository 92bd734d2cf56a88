"""`python -m loadtest.audit_bench`: the audit log's pages over a long log, measured.

Fills one workspace's audit stream in a private Redis (default 1,000,000 entries, one of them
matching a rare action), then times pages of GET /v1/audit's domain function: the newest
pages with no filter, and a rare filter followed page after page to its end. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from gate.clock import ManualClock
from gate.context import Context
from gate.history import audit
from gate.settings import Settings
from gate.store import keys
from gate.store.redis_client import connect
from gate.store.redis_proc import RedisServer
from gate.store.scripts import Scripts

FILL = """
local base = tonumber(ARGV[2])
for i = 1, tonumber(ARGV[1]) do
  local n = base + i
  redis.call('XADD', KEYS[1], '1800000000000-' .. n, 'at', 1800000000000,
    'action', n == tonumber(ARGV[3]) and 'rare.thing' or 'workspace.updated',
    'key_id', 'key_x', 'person', 'p', 'ip', '127.0.0.1', 'target', 'ws_x',
    'before', '{"a":"1"}', 'after', '{"a":"2"}')
end
"""


async def _pages(ctx: Context, workspace_id: str, f: audit.Filters, most: int) -> dict[str, float]:
    cursor: str | None = None
    pages = found = 0
    worst = total = 0.0
    while pages < most:
        started = time.perf_counter()
        got, cursor = await audit.page(ctx, workspace_id, f, cursor, 50)
        took = time.perf_counter() - started
        pages, found, total, worst = pages + 1, found + len(got), total + took, max(worst, took)
        if cursor is None:
            break
    return {"pages": pages, "found": found, "worst_page_ms": round(worst * 1000, 1),
            "mean_page_ms": round(total / pages * 1000, 1)}  # fmt: skip


async def run(entries: int) -> dict[str, object]:
    with RedisServer.start(Path(tempfile.mkdtemp()), appendonly=False) as server:
        client = await connect(server.url)
        try:
            workspace_id = "ws_00000000000000aa"
            stream = keys.for_workspace(workspace_id).audit
            started = time.perf_counter()
            for base in range(0, entries, 100_000):
                await client.eval(FILL, 1, stream, min(100_000, entries - base), base,
                                  entries // 2)  # fmt: skip
            filled_s = time.perf_counter() - started
            memory = (await client.info("memory"))["used_memory"]
            scripts = Scripts(client)
            await scripts.load()
            ctx = Context(client, scripts, ManualClock(), Settings(redis_url=server.url))
            return {
                "entries": await client.xlen(stream),
                "fill_s": round(filled_s, 1),
                "redis_bytes_per_entry": round(memory / entries),
                "no_filter_first_20_pages": await _pages(ctx, workspace_id, audit.Filters(), 20),
                "rare_filter_to_the_end": await _pages(
                    ctx, workspace_id, audit.Filters(action="rare.thing"), entries
                ),
            }
        finally:
            await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.entries)), indent=2))


if __name__ == "__main__":
    main()

"""Independent check of DESIGN §11's invariants, read straight from Redis (`gate check`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec
from redis.asyncio import Redis, RedisCluster

from gate.calls.rating import Increment, cost_micros
from gate.history.ledger import Row
from gate.store import keys
from gate.store.redis_client import as_bytes, entries, text

if TYPE_CHECKING:
    from gate.history.archive import Archive


def _call_cost_problem(row: Row) -> str | None:
    """Invariant 3: a call row bills exactly cost(duration) under the rate it started with."""
    if row.type not in ("call", "ai_agent") or "rate_micros" not in row.extra:
        return None
    x = row.extra
    try:
        increment = Increment.parse(x["increment"])
        expected = cost_micros(
            int(x["rate_micros"]),
            int(x.get("connect_fee_micros", "0")),
            increment,
            int(x["duration_s"]),
        )
    except (KeyError, ValueError) as err:
        return f"has unreadable rating fields ({err!r})"
    if -row.amount_micros != expected:
        return (
            f"bills {-row.amount_micros} for {x['duration_s']} s, cost(duration) at its rate "
            f"is {expected}"
        )
    return None


async def check_workspace(
    client: Redis | RedisCluster, workspace_id: str, archive: Archive | None = None
) -> list[str]:
    """Every broken invariant of one workspace, as sentences; empty when all hold.

    Safe on a live workspace: the wallet, the live calls and the newest ledger row are read
    in one MULTI snapshot, and only the rows up to that one are summed. With an archive, the
    running sums go through the archived rows first, then on across the seam through the
    rows only Redis has: a row lost between the two breaks the next row's balance.
    """
    k = keys.for_workspace(workspace_id)
    problems: list[str] = []
    async with client.pipeline(transaction=True) as pipe:
        pipe.hmget(k.wallet, "balance", "reserved")
        pipe.hgetall(k.live)
        pipe.xrevrange(k.ledger, "+", "-", count=1)
        (balance_raw, reserved_raw), live, newest = await pipe.execute()
    if balance_raw is None or reserved_raw is None:
        return [f"{workspace_id}: registered but has no wallet"]
    balance, reserved = int(balance_raw), int(reserved_raw)
    until = text(newest[0][0]) if newest else None
    running = 0

    def one(row: Row) -> None:
        nonlocal running
        running += row.amount_micros
        if row.balance_after_micros != running:
            problems.append(
                f"{workspace_id}: row {row.id} says balance after "
                f"{row.balance_after_micros}, running sum is {running}"
            )
        problem = _call_cost_problem(row)
        if problem:
            problems.append(f"{workspace_id}: row {row.id} {problem}")

    last = "0-0"
    if archive is not None:  # an empty stream: every row is archived
        async for row in archive.scan_oldest_first(workspace_id, until):
            one(row)
            last = row.id
    while until is not None:
        batch = entries(await client.xrange(k.ledger, f"({last}", until, count=1000))
        for entry_id, raw in batch:
            try:
                row = Row.parse(entry_id, raw)
            except (KeyError, ValueError, UnicodeDecodeError) as err:
                problems.append(f"{workspace_id}: row {text(entry_id)} is malformed ({err!r})")
                last = text(entry_id)
                continue
            one(row)
            last = row.id
        if len(batch) < 1000:
            break
    if running != balance:
        problems.append(f"{workspace_id}: balance {balance} != ledger sum {running}")
    held = 0
    for record in live.values():
        held += int(msgspec.msgpack.decode(as_bytes(record))["held"])
    if reserved != held:
        problems.append(f"{workspace_id}: reserved {reserved} != held by live calls {held}")
    if reserved < 0:
        problems.append(f"{workspace_id}: reserved {reserved} < 0")
    return problems


async def check_all(
    client: Redis | RedisCluster,
    workspace_ids: Iterable[str] | None = None,
    archive: Archive | None = None,
) -> tuple[list[str], int]:
    """Problems across workspaces (all registered ones by default) and how many were read."""
    if workspace_ids is None:
        workspace_ids = sorted(text(m) for m in await client.smembers(keys.WORKSPACES))
    problems: list[str] = []
    count = 0
    for workspace_id in workspace_ids:
        if not await client.exists(keys.for_workspace(workspace_id).ws):
            continue  # registered by a create that crashed before its script ran
        count += 1
        problems += await check_workspace(client, workspace_id, archive)
    return problems, count

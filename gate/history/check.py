"""Independent check of docs/design.md §11's invariants, read straight from Redis (`gate check`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

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
        rate, fee, duration = (int(x["rate_micros"]), int(x.get("connect_fee_micros", "0")),
                               int(x["duration_s"]))  # fmt: skip
        # Under a plan the allowance covers the first billable seconds, money the rest, and
        # the money comes from the commitment before the balance (lua/_plan.lua).
        covered = int(x.get("allowance_units", "0")) + int(x.get("allowance_prior_units", "0"))

        def money(seconds: int) -> int:
            return cost_micros(rate, fee, increment, seconds, covered_s=covered)

        expected = money(duration)
        if x.get("flag") == "late_end":  # the rest of a call Gate ended (swept) before
            expected -= money(int(x["billed_before_s"]))
        billed = -row.amount_micros + int(x.get("commitment_micros", "0"))
    except (KeyError, ValueError) as err:
        return f"has unreadable rating fields ({err!r})"
    if billed != expected:
        return f"bills {billed} for {duration} s, cost(duration) at its rate is {expected}"
    return None


# ledger row type -> the plan service whose allowance it draws
_BUCKET_SERVICE = {"call": "voice", "ai_agent": "ai_agent", "sms": "sms", "mms": "mms",
                   "fax": "fax", "chat": "chat"}  # fmt: skip


class _Buckets:
    """What the rows of the current plan cycle drew from each bucket (docs/design.md §8)."""

    def __init__(self) -> None:
        self.allowance: dict[str, int] = {}
        self.commitment: dict[str, int] = {}

    def add(self, row: Row) -> None:
        if row.type == "plan_cycle":  # a cycle starts: every bucket is full again
            self.allowance.clear()
            self.commitment.clear()
            return
        service = _BUCKET_SERVICE.get(row.type)
        units = row.extra.get("allowance_units")
        if service and units:
            self.allowance[service] = self.allowance.get(service, 0) + int(units)
        name = row.extra.get("commitment")
        if name:
            spent = int(row.extra.get("commitment_micros", "0"))
            self.commitment[name] = self.commitment.get(name, 0) + spent

    def problems(self, wallet: dict[str, str], live: list[dict[str, Any]]) -> list[str]:
        """Each bucket's balance = its cycle total less its rows; holds = the live calls'."""
        out: list[str] = []
        held_units: dict[str, int] = {}
        held_micros: dict[str, int] = {}
        for c in live:
            if "aw" in c:
                held_units[c["svc"]] = held_units.get(c["svc"], 0) + int(c["aw"])
            if c.get("cmn"):
                held_micros[c["cmn"]] = held_micros.get(c["cmn"], 0) + int(c["ch"])
        for service in filter(None, wallet.get("pl_al", "").split(",")):
            total, left = int(wallet[f"alt:{service}"]), int(wallet[f"al:{service}"])
            used, held = self.allowance.get(service, 0), held_units.get(service, 0)
            if left + held != total - used:
                out.append(
                    f"al:{service} {left} + held by live calls {held} != cycle total {total}"
                    f" - rows {used}"
                )
        for name in filter(None, wallet.get("pl_cm", "").split(",")):
            total, left = int(wallet[f"cmt:{name}"]), int(wallet[f"cm:{name}"])
            used = self.commitment.get(name, 0)
            if left != total - used:
                out.append(f"cm:{name} {left} != cycle total {total} - rows {used}")
        for name, held in held_micros.items():
            if int(wallet.get(f"cmr:{name}", "0")) != held:
                out.append(f"cmr:{name} {wallet.get(f'cmr:{name}')} != held by live calls {held}")
        return out


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
        pipe.hgetall(k.wallet)
        pipe.hlen(k.keys)
        pipe.hlen(k.numbers)
        (
            (balance_raw, reserved_raw),
            live,
            newest,
            wallet_raw,
            n_keys,
            n_numbers,
        ) = await pipe.execute()
    if balance_raw is None or reserved_raw is None:
        return [f"{workspace_id}: registered but has no wallet"]
    balance, reserved = int(balance_raw), int(reserved_raw)
    until = text(newest[0][0]) if newest else None
    running = 0
    buckets = _Buckets()

    def one(row: Row) -> None:
        nonlocal running
        running += row.amount_micros
        buckets.add(row)
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
    records = [msgspec.msgpack.decode(as_bytes(r)) for r in live.values()]
    for record in records:
        held += int(record["held"])
    wallet = {text(n): text(v) for n, v in wallet_raw.items()}
    problems += [f"{workspace_id}: {p}" for p in buckets.problems(wallet, records)]
    if reserved != held:
        problems.append(f"{workspace_id}: reserved {reserved} != held by live calls {held}")
    if reserved < 0:
        problems.append(f"{workspace_id}: reserved {reserved} < 0")
    if wallet.get("hold") == "closed":  # gate/operator/holds.py: nothing may be left running
        for count, what in ((len(live), "live call(s)"), (n_keys, "API key(s)"),
                            (n_numbers, "rented number(s)")):  # fmt: skip
            if count:
                problems.append(f"{workspace_id}: closed but still has {count} {what}")
        if balance > 0:
            problems.append(f"{workspace_id}: closed with {balance} micros neither refunded "
                            "nor owed")  # fmt: skip
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

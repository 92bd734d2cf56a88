"""The Lua scripts: headers and registry, the loader, SCRIPT FLUSH recovery, every reply code
of the wallet scripts through its Python wrapper, and the same scripts on Redis Cluster."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from gate.clock import ManualClock
from gate.context import Context
from gate.errors import NotFound
from gate.history.check import check_all
from gate.settings import Settings
from gate.store import keys, redis_client
from gate.store.redis_proc import RedisClusterProcs
from gate.store.scripts import Code, ScriptError, Scripts, compile_scripts, lua_dir
from gate.tenancy.auth import Role, hash_key
from gate.tenancy.workspaces import Workspaces
from gate.wallet.payments import SandboxProvider
from gate.wallet.service import Wallet, body_hash, idem_claim, idem_fail, post
from tests.helpers import make_ctx

SCRIPT_FILES = sorted(p for p in lua_dir().glob("*.lua") if not p.name.startswith("_"))
_KEY_LINE = re.compile(r"^-- KEYS\[(\d+)(?:\.\.(\d+))?\]\s+\S")
_KEY_USE = re.compile(r"KEYS\[(\d+)\]")


def _header(text: str) -> list[str]:
    """The comment block a script opens with."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return lines


# ---------------------------------------------------------------- header and registry


def test_there_are_scripts() -> None:
    names = {p.name for p in SCRIPT_FILES}
    for wallet_script in (
        "workspace_create-6.lua",
        "key_create-3.lua",
        "idem_claim-2.lua",
        "idem_fail-1.lua",
        "post-8.lua",
        "workspace_update-3.lua",
    ):
        assert wallet_script in names


@pytest.mark.parametrize("path", SCRIPT_FILES, ids=lambda p: p.name)
def test_script_header(path: Path) -> None:
    """Every script says what it does, documents each key, its arguments and its replies."""
    text = path.read_text(encoding="utf-8")
    name, declared = path.stem.rsplit("-", 1)
    header = _header(text)
    assert header, f"{path.name} must open with a header comment"
    assert re.match(rf"^-- {name}: \S", header[0]), (
        f"{path.name}: the first line must read '-- {name}: <what it does>'"
    )
    documented: list[int] = []
    for line in header:
        if m := _KEY_LINE.match(line):
            first, last = int(m[1]), int(m[2] or m[1])
            documented += range(first, last + 1)
    assert documented == list(range(1, int(declared) + 1)), (
        f"{path.name}: the header documents KEYS {documented}, the name declares {declared}"
    )
    assert any(line.startswith("-- ARGV[") for line in header), f"{path.name}: no ARGV lines"
    assert any(line.startswith("-- Replies") for line in header), f"{path.name}: no Replies"
    body = [line for line in text.splitlines()[len(header) :] if not line.lstrip().startswith("--")]
    used = {int(i) for line in body for i in _KEY_USE.findall(line)}
    assert used <= set(range(1, int(declared) + 1)), f"{path.name} uses KEYS {sorted(used)}"
    assert "local rcall = redis.call" in body, f"{path.name}: body must start the usual way"


def test_header_test_catches_a_drifted_script(tmp_path: Path) -> None:
    """The check above fails on the kind of drift it exists for (BullMQ's extendLock-2)."""
    drifted = tmp_path / "lock_extend-2.lua"
    drifted.write_text(
        "-- lock_extend: extend a lock.\n-- KEYS[1] lock\n-- ARGV[1] ttl\n-- Replies: {0}\n"
        "local rcall = redis.call\nrcall('PEXPIRE', KEYS[1], ARGV[1])\nreturn {0}\n"
    )
    with pytest.raises(AssertionError, match="declares 2"):
        test_script_header(drifted)


def test_compile_resolves_includes_and_key_counts() -> None:
    scripts = compile_scripts(
        {"_inc.lua": "local one = 1", "thing-3.lua": "-- thing\n--!include _inc.lua\nreturn one"}
    )
    assert set(scripts) == {"thing"}
    thing = scripts["thing"]
    assert thing.num_keys == 3
    assert thing.source == "-- thing\nlocal one = 1\nreturn one"
    assert thing.sha == hashlib.sha1(thing.source.encode()).hexdigest()
    shipped = compile_scripts()
    assert {f"{s.name}-{s.num_keys}.lua" for s in shipped.values()} == {
        p.name for p in SCRIPT_FILES
    }
    assert all("--!include" not in s.source for s in shipped.values())


@pytest.mark.parametrize("filename", ["post.lua", "Post-8.lua", "post-x.lua", "post-8.txt.lua"])
def test_compile_rejects_a_malformed_filename(filename: str) -> None:
    with pytest.raises(ScriptError, match="name must be"):
        compile_scripts({filename: "return {0}"})


def test_compile_rejects_a_missing_include() -> None:
    with pytest.raises(ScriptError, match=r"include _nowhere\.lua not found"):
        compile_scripts({"thing-1.lua": "--!include _nowhere.lua\nreturn {0}"})


async def test_load_fails_on_a_syntax_error(redis: Redis) -> None:
    broken = Scripts(redis, compile_scripts({"broken-1.lua": "return {0"}))
    with pytest.raises(ResponseError):
        await broken.load()


@pytest.fixture
async def ctx(redis: Redis, clock: ManualClock, settings: Settings) -> AsyncIterator[Context]:
    context = await make_ctx(redis, clock, settings)
    before = await redis.smembers(keys.WORKSPACES)
    yield context
    created = [m.decode() for m in await redis.smembers(keys.WORKSPACES) - before]
    problems, _ = await check_all(redis, created)
    assert not problems, problems


@pytest.fixture
async def ws(ctx: Context) -> str:
    return (await Workspaces(ctx).create("Scripts Inc")).id


async def test_wrong_key_count_is_refused_before_redis(ctx: Context, ws: str) -> None:
    k = keys.for_workspace(ws)
    with pytest.raises(ScriptError, match="post takes 8 keys, got 1"):
        await ctx.scripts.call("post", [k.ws], [0, 1, "adjustment", "x", "r", "none"])
    with pytest.raises(ScriptError, match="idem_fail takes 1 keys, got 2"):
        await ctx.scripts.call("idem_fail", [k.idem("a"), k.idem("b")], ["{}"])
    assert await ctx.client.xlen(k.ledger) == 1  # the signup credit only


async def test_recovers_after_script_flush(ctx: Context, ws: str, redis: Redis) -> None:
    assert await ctx.scripts.loaded()
    await redis.script_flush()
    assert not await ctx.scripts.loaded()
    posted = await post(
        ctx,
        ws,
        now_ms=ctx.clock.now_ms(),
        amount_micros=1_000_000,
        type="adjustment",
        description="after flush",
        reference="flush-1",
        floor="none",
    )
    assert posted.code == Code.OK
    assert posted.balance_micros == 11_000_000
    assert await ctx.scripts.loaded()
    # And again, with several calls racing into NOSCRIPT at once.
    await redis.script_flush()
    created = [await Workspaces(ctx).create(f"after flush {i}") for i in range(3)]
    assert [c.balance_micros for c in created] == [10_000_000] * 3


# ---------------------------------------------------------------- workspace_create


async def test_workspace_create_ok(ctx: Context, redis: Redis) -> None:
    created = await Workspaces(ctx).create("Acme", "org_1")
    k = keys.for_workspace(created.id)
    assert created.balance_micros == 10_000_000
    assert await redis.sismember(keys.WORKSPACES, created.id)
    record = await redis.hgetall(k.ws)
    assert record[b"name"] == b"Acme"
    assert record[b"organization_id"] == b"org_1"
    assert record[b"webhook_secret"].startswith(b"whsec_")
    assert await redis.hget(k.keys, hash_key(created.key)) == f"admin {created.key_id}".encode()
    [(row_id, row)] = await redis.xrange(k.ledger)
    assert row[b"type"] == b"adjustment"
    assert row[b"desc"] == b"Signup credit"
    assert row[b"amount"] == row[b"balance"] == b"10000000"
    assert row_id.startswith(str(ctx.clock.now_ms()).encode() + b"-")


async def test_workspace_create_without_signup_credit(ctx: Context, redis: Redis) -> None:
    free = replace(ctx, settings=replace(ctx.settings, signup_credit_micros=0))
    created = await Workspaces(free).create("No credit")
    k = keys.for_workspace(created.id)
    assert created.balance_micros == 0
    assert await redis.xlen(k.ledger) == 0
    assert await redis.hget(k.wallet, "balance") == b"0"


async def test_workspace_create_refuses_an_existing_id(ctx: Context, ws: str, redis: Redis) -> None:
    k = keys.for_workspace(ws)
    before = (await redis.hgetall(k.ws), await redis.hgetall(k.wallet), await redis.xlen(k.ledger))
    reply = await ctx.scripts.call(
        "workspace_create",
        [k.ws, k.wallet, k.keys, k.ledger, k.events, k.audit],
        [ctx.clock.now_ms(), ws, "Usurper", "", "whsec_x", 5_000_000, "f" * 64, "key_x"],
    )
    assert reply == [Code.NO_WORKSPACE]
    after = (await redis.hgetall(k.ws), await redis.hgetall(k.wallet), await redis.xlen(k.ledger))
    assert after == before
    assert await redis.hget(k.keys, "f" * 64) is None


# ---------------------------------------------------------------- key_create


async def test_key_create_ok(ctx: Context, ws: str, redis: Redis) -> None:
    key, key_id = await Workspaces(ctx).create_key(ws, Role.switch)
    assert key.startswith(f"gk_{ws}_")
    stored = await redis.hget(keys.for_workspace(ws).keys, hash_key(key))
    assert stored == f"switch {key_id}".encode()


async def test_key_create_unknown_workspace(ctx: Context, redis: Redis) -> None:
    ghost = "ws_00000000deadbeef"
    with pytest.raises(NotFound):
        await Workspaces(ctx).create_key(ghost, Role.admin)
    assert await redis.exists(keys.for_workspace(ghost).keys) == 0


# ---------------------------------------------------------------- idem_claim / idem_fail

LEASE_MS, TTL_MS = 30_000, 3_600_000


async def test_idem_claim_codes(ctx: Context, ws: str, redis: Redis) -> None:
    clock = ctx.clock
    assert isinstance(clock, ManualClock)
    idem = keys.for_workspace(ws).idem("claim-test")
    digest = body_hash({"amount_micros": 1, "pm": "pm_card_visa"})

    first = await idem_claim(ctx, ws, idem, clock.now_ms(), digest, LEASE_MS, TTL_MS)
    assert first.code == Code.OK
    assert await redis.hget(idem, "state") == b"pending"
    assert 0 < await redis.pttl(idem) <= TTL_MS

    held = await idem_claim(ctx, ws, idem, clock.now_ms(), digest, LEASE_MS, TTL_MS)
    assert held.code == Code.IN_PROGRESS
    assert held.lease_until_ms == clock.now_ms() + LEASE_MS

    reused = await idem_claim(ctx, ws, idem, clock.now_ms(), "other", LEASE_MS, TTL_MS)
    assert reused.code == Code.IDEMPOTENCY_KEY_REUSED

    clock.advance(LEASE_MS / 1000 + 1)  # the first claimer died: the lease lapses
    taken = await idem_claim(ctx, ws, idem, clock.now_ms(), digest, LEASE_MS, TTL_MS)
    assert taken.code == Code.OK

    posted = await post(
        ctx,
        ws,
        now_ms=clock.now_ms(),
        amount_micros=1,
        type="recharge",
        description="top-up",
        reference="pay_claim_test",
        floor="none",
        idem=idem,
    )
    assert posted.code == Code.OK
    done = await idem_claim(ctx, ws, idem, clock.now_ms(), digest, LEASE_MS, TTL_MS)
    assert (done.code, done.state, done.result) == (Code.REPEAT, "done", posted.row_id)
    # A finished record still tells a reuse from a replay.
    again = await idem_claim(ctx, ws, idem, clock.now_ms(), "other", LEASE_MS, TTL_MS)
    assert again.code == Code.IDEMPOTENCY_KEY_REUSED


async def test_idem_claim_unknown_workspace(ctx: Context, redis: Redis) -> None:
    ghost = "ws_00000000deadbeef"
    idem = keys.for_workspace(ghost).idem("x")
    claim = await idem_claim(ctx, ghost, idem, 1, "d", LEASE_MS, TTL_MS)
    assert claim.code == Code.NO_WORKSPACE
    assert await redis.exists(idem) == 0


async def test_idem_fail_codes(ctx: Context, ws: str, redis: Redis) -> None:
    idem = keys.for_workspace(ws).idem("fail-test")
    assert await idem_fail(ctx, idem, "{}") == Code.NO_WORKSPACE  # no record: nothing written
    assert await redis.exists(idem) == 0

    claim = await idem_claim(ctx, ws, idem, ctx.clock.now_ms(), "d", LEASE_MS, TTL_MS)
    assert claim.code == Code.OK
    answer = orjson.dumps({"message": "Your card was declined."}).decode()
    assert await idem_fail(ctx, idem, answer) == Code.OK
    replay = await idem_claim(ctx, ws, idem, ctx.clock.now_ms(), "d", LEASE_MS, TTL_MS)
    assert (replay.code, replay.state, replay.result) == (Code.REPEAT, "failed", answer)

    assert await idem_fail(ctx, idem, "changed") == Code.NO_WORKSPACE  # finished already
    assert await redis.hget(idem, "result") == answer.encode()


# ---------------------------------------------------------------- post


async def test_post_ok_and_repeat(ctx: Context, ws: str, redis: Redis) -> None:
    k = keys.for_workspace(ws)
    posted = await post(
        ctx,
        ws,
        now_ms=ctx.clock.now_ms(),
        amount_micros=2_500_000,
        type="refund",
        description="dropped call",
        reference="ref-1",
        floor="available",
        extra=[("source", "operator"), ("user", "alice")],
    )
    assert posted.code == Code.OK
    assert (posted.balance_micros, posted.reserved_micros, posted.woken) == (12_500_000, 0, 0)
    [(row_id, row)] = await redis.xrevrange(k.ledger, count=1)
    assert row_id.decode() == posted.row_id
    assert row == {
        b"type": b"refund",
        b"desc": b"dropped call",
        b"amount": b"2500000",
        b"balance": b"12500000",
        b"ref": b"ref-1",
        b"source": b"operator",
        b"user": b"alice",
    }
    version = await redis.hget(k.wallet, "version")

    repeat = await post(
        ctx,
        ws,
        now_ms=ctx.clock.now_ms(),
        amount_micros=2_500_000,
        type="refund",
        description="again",
        reference="ref-1",
        floor="available",
    )
    assert (repeat.code, repeat.row_id) == (Code.REPEAT, posted.row_id)
    # The same reference with another amount or type is a mistake, not a repeat: -2.
    for amount, kind in ((9_000_000, "refund"), (2_500_000, "adjustment")):
        reused = await post(
            ctx,
            ws,
            now_ms=ctx.clock.now_ms(),
            amount_micros=amount,
            type=kind,
            description="again",
            reference="ref-1",
            floor="available",
        )
        assert (reused.code, reused.row_id) == (Code.IDEMPOTENCY_KEY_REUSED, posted.row_id)
    assert await redis.hget(k.wallet, "balance") == b"12500000"
    assert await redis.hget(k.wallet, "version") == version
    assert await redis.xlen(k.ledger) == 2


async def test_post_repeat_answers_a_pending_idempotency_record(
    ctx: Context, ws: str, redis: Redis
) -> None:
    """The charge id was posted before under a record that expired: the new claim is done."""
    k = keys.for_workspace(ws)
    args = {"amount_micros": 1_000_000, "type": "recharge", "description": "t", "floor": "none"}
    first = await post(ctx, ws, now_ms=ctx.clock.now_ms(), reference="pay_same", **args)
    idem = k.idem("topup:expired")
    assert (await idem_claim(ctx, ws, idem, ctx.clock.now_ms(), "d", LEASE_MS, TTL_MS)).code == 0
    again = await post(ctx, ws, now_ms=ctx.clock.now_ms(), reference="pay_same", idem=idem, **args)
    assert again.code == Code.REPEAT
    assert await redis.hmget(idem, "state", "result") == [b"done", first.row_id.encode()]


async def test_post_unknown_workspace(ctx: Context, redis: Redis) -> None:
    ghost = "ws_00000000deadbeef"
    posted = await post(
        ctx,
        ghost,
        now_ms=1,
        amount_micros=1,
        type="adjustment",
        description="x",
        reference="r",
        floor="none",
    )
    assert posted == type(posted)(Code.NO_WORKSPACE)
    k = keys.for_workspace(ghost)
    assert await redis.exists(k.ws, k.wallet, k.ledger, k.refs, k.events) == 0


async def test_post_insufficient_and_floor_none(ctx: Context, ws: str, redis: Redis) -> None:
    k = keys.for_workspace(ws)
    await redis.hset(k.wallet, "reserved", 3_000_000)  # as if live calls held $3
    try:
        refused = await post(
            ctx,
            ws,
            now_ms=ctx.clock.now_ms(),
            amount_micros=-7_000_001,
            type="adjustment",
            description="too much",
            reference="deb-1",
            floor="available",
        )
        assert refused.code == Code.INSUFFICIENT
        assert (refused.balance_micros, refused.reserved_micros) == (10_000_000, 3_000_000)
        assert await redis.xlen(k.ledger) == 1
        assert await redis.hget(k.refs, "deb-1") is None
        exact = await post(
            ctx,
            ws,
            now_ms=ctx.clock.now_ms(),
            amount_micros=-7_000_000,
            type="adjustment",
            description="all of it",
            reference="deb-2",
            floor="available",
        )
        assert (exact.code, exact.balance_micros) == (Code.OK, 3_000_000)
    finally:
        await redis.hset(k.wallet, "reserved", 0)
    below = await post(
        ctx,
        ws,
        now_ms=ctx.clock.now_ms(),
        amount_micros=-5_000_000,
        type="sms",
        description="usage is never lost",
        reference="deb-3",
        floor="none",
    )
    assert (below.code, below.balance_micros) == (Code.OK, -2_000_000)
    assert await redis.hget(k.wallet, "zero_since") == str(ctx.clock.now_ms()).encode()
    with pytest.raises(ValueError, match="floor"):
        await post(
            ctx,
            ws,
            now_ms=1,
            amount_micros=1,
            type="adjustment",
            description="x",
            reference="r",
            floor="nope",
        )


async def test_post_credit_wakes_limited_calls(ctx: Context, ws: str, redis: Redis) -> None:
    k = keys.for_workspace(ws)
    await redis.sadd(k.cuts, "call-a", "call-b")
    await redis.hset(k.wallet, "depleted", 1)
    try:
        posted = await post(
            ctx,
            ws,
            now_ms=ctx.clock.now_ms(),
            amount_micros=1_000_000,
            type="recharge",
            description="money arrives",
            reference="wake-1",
            floor="none",
        )
        assert posted.woken == 2
        assert await redis.zscore(k.due, "call-a") == ctx.clock.now_ms()
        assert await redis.hexists(k.wallet, "depleted") == 0
        types = [e[1][b"type"] for e in await redis.xrange(k.events)]
        assert types[-2:] == [b"transaction.created", b"wallet.recharged"]
        debit = await post(
            ctx,
            ws,
            now_ms=ctx.clock.now_ms(),
            amount_micros=-1,
            type="sms",
            description="a debit wakes nobody",
            reference="wake-2",
            floor="none",
        )
        assert debit.woken == 0
    finally:
        await redis.delete(k.cuts, k.due)


async def test_ledger_time_never_goes_backwards(ctx: Context, ws: str, redis: Redis) -> None:
    """A gate host whose clock is a little behind still appends rows in order."""
    k = keys.for_workspace(ws)
    now = ctx.clock.now_ms()
    for i, at in enumerate((now + 5, now - 50, now)):
        posted = await post(
            ctx,
            ws,
            now_ms=at,
            amount_micros=1,
            type="adjustment",
            description="t",
            reference=f"t{i}",
            floor="none",
        )
        assert posted.code == Code.OK
    ids = [e[0].decode() for e in await redis.xrange(k.ledger)]
    assert [int(i.split("-")[0]) for i in ids[1:]] == [now + 5] * 3


# ---------------------------------------------------------------- workspace_update


async def test_workspace_update_ok(ctx: Context, ws: str, redis: Redis) -> None:
    k = keys.for_workspace(ws)
    version = int(await redis.hget(k.wallet, "version"))
    workspaces = Workspaces(ctx)
    new = await workspaces.update(ws, {"inbound_grace_s": 5, "switch_webhook_url": "http://x"})
    assert new == version + 1
    assert (await workspaces.get(ws)).inbound_grace_s == 5
    assert await workspaces.update(ws, {"switch_webhook_url": None}) == version + 2
    assert await redis.hexists(k.ws, "switch_webhook_url") == 0
    assert await workspaces.update(ws, {}) == 0
    with pytest.raises(ValueError, match="use None"):
        await workspaces.update(ws, {"name": ""})


async def test_workspace_update_unknown_workspace(ctx: Context, redis: Redis) -> None:
    ghost = "ws_00000000deadbeef"
    with pytest.raises(NotFound):
        await Workspaces(ctx).update(ghost, {"name": "x"})
    k = keys.for_workspace(ghost)
    assert await redis.exists(k.ws, k.wallet) == 0


# ---------------------------------------------------------------- Redis Cluster


@pytest.mark.cluster
async def test_wallet_scripts_on_redis_cluster(
    redis_cluster: RedisClusterProcs, clock: ManualClock, settings: Settings
) -> None:
    client = await redis_client.connect(redis_cluster.url)
    try:
        assert isinstance(client, RedisCluster)
        ctx = await make_ctx(client, clock, replace(settings, redis_url=redis_cluster.url))
        workspaces = Workspaces(ctx)
        wallet = Wallet(ctx, workspaces, SandboxProvider())
        created = [await workspaces.create(f"Cluster {i}") for i in range(6)]
        ids = [c.id for c in created]
        nodes = {client.get_node_from_key(keys.for_workspace(i).ws).name for i in ids}
        assert len(nodes) >= 2, "six random workspaces should spread over the masters"
        for n, workspace_id in enumerate(ids):
            row = await wallet.topup(workspace_id, (n + 1) * 1_000_000, "pm_card_visa", f"k{n}")
            replay = await wallet.topup(workspace_id, (n + 1) * 1_000_000, "pm_card_visa", f"k{n}")
            assert replay == row
            adjusted, new = await wallet.adjust(workspace_id, -500_000, "adjustment", "fee", None)
            assert new
            assert adjusted.balance_after_micros == 10_000_000 + (n + 1) * 1_000_000 - 500_000
            view = await wallet.view(workspace_id)
            assert view.balance_micros == adjusted.balance_after_micros
        key, _ = await workspaces.create_key(ids[0], Role.agent)
        assert await client.hget(keys.for_workspace(ids[0]).keys, hash_key(key)) is not None
        await workspaces.update(ids[1], {"max_concurrent_calls": 3})
        assert (await workspaces.get(ids[1])).max_concurrent_calls == 3
        # Recovery after SCRIPT FLUSH works per node too.
        await client.script_flush()
        posted = await post(
            ctx,
            ids[2],
            now_ms=clock.now_ms(),
            amount_micros=1,
            type="adjustment",
            description="after flush",
            reference="cf",
            floor="none",
        )
        assert posted.code == Code.OK
        problems, checked = await check_all(client, ids)
        assert (problems, checked) == ([], 6)
        everything, _ = await check_all(client)
        assert everything == []
    finally:
        await client.aclose()


# ---------------------------------------------------------------- gate check


async def test_check_reports_each_broken_invariant(ctx: Context, ws: str, redis: Redis) -> None:
    k = keys.for_workspace(ws)
    try:
        assert await check_all(redis, [ws]) == ([], 1)
        await redis.hincrby(k.wallet, "reserved", 5)  # held by no live call
        await redis.xadd(k.ledger, {"type": "adjustment", "amount": "3"})  # no balance, desc...
        await redis.xadd(k.ledger, {"type": "adjustment", "desc": "x", "amount": "7",
                                    "balance": "10000099", "ref": "r"})  # fmt: skip
        problems, checked = await check_all(redis, [ws])
        assert checked == 1
        assert problems[0].startswith(f"{ws}: row ") and "is malformed" in problems[0]
        assert problems[1:] == [
            f"{ws}: row {(await redis.xrevrange(k.ledger, count=1))[0][0].decode()} says "
            "balance after 10000099, running sum is 10000007",
            f"{ws}: balance 10000000 != ledger sum 10000007",
            f"{ws}: reserved 5 != held by live calls 0",
        ]
        # A workspace registered by a create that crashed before its script is skipped.
        await redis.sadd(keys.WORKSPACES, "ws_00000000deadbeef")
        assert (await check_all(redis, ["ws_00000000deadbeef"]))[1] == 0
    finally:
        await redis.srem(keys.WORKSPACES, ws, "ws_00000000deadbeef")
        await redis.delete(k.ws, k.wallet, k.ledger, k.keys, k.events, k.refs)

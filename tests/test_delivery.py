"""Webhook delivery: signatures, order, retries, dead letters, crashes and several workers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from gate.api.http import CTX, OUTBOX
from gate.clock import ManualClock
from gate.delivery import events
from gate.delivery.outbox import Outbox
from gate.store import keys
from gate.store.redis_client import text
from tests.conftest import Client, auth, new_workspace

Respond = Callable[[dict[str, Any], int], Awaitable[int]]


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    event: dict[str, Any]


@dataclass
class Receiver:
    """A real local HTTP server standing in for the switch; `respond` picks each answer."""

    workspace_id: str = ""
    respond: Respond | None = None
    hits: list[Hit] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event = orjson.loads(body)
        # Ports are reused across tests: take and ignore other tests' leftovers.
        if event["workspace_id"] != self.workspace_id:
            return web.Response(status=200)
        hit = Hit(dict(request.headers), body, event)
        self.hits.append(hit)
        tries = sum(1 for h in self.hits if h.event["id"] == event["id"])
        status = 200 if self.respond is None else await self.respond(event, tries)
        return web.Response(status=status)

    def ids(self) -> Counter[str]:
        return Counter(h.event["id"] for h in self.hits)


Serve = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def receiver(aiohttp_server: Serve) -> Receiver:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = await aiohttp_server(app)
    rec.url = str(server.make_url("/hook"))
    return rec


async def until(check: Callable[[], Any], within: float = 15.0) -> None:
    """Wait until check() (sync or async) is true."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        await asyncio.sleep(0.01)


async def setup_ws(client: Client, rec: Receiver, url: str | None = None) -> dict[str, Any]:
    """A workspace whose webhook points at the receiver; returns its JSON plus the secret."""
    ws = await new_workspace(client)
    rec.workspace_id = ws["id"]
    resp = await client.patch(
        "/v1/workspace", json={"switch_webhook_url": url or rec.url}, headers=auth(ws["key"])
    )
    assert resp.status == 200, await resp.text()
    ws["secret"] = (await resp.json())["webhook_secret"]
    return ws


async def topup(client: Client, ws: dict[str, Any], usd: int = 10) -> float:
    """Top up through the API; returns how long the API took."""
    started = time.perf_counter()
    resp = await client.post(
        "/v1/wallet/topup",
        json={"amount_usd": usd, "payment_method_id": "pm_card_visa"},
        headers=auth(ws["key"]),
    )
    assert resp.status == 201, await resp.text()
    return time.perf_counter() - started


async def stream_ids(redis: Redis, workspace_id: str) -> list[str]:
    raw = await redis.xrange(keys.for_workspace(workspace_id).events)
    return [text(entry_id) for entry_id, _ in raw]


async def drained(redis: Redis, workspace_id: str) -> bool:
    """The delivery cursor is at the end of the stream and no retry state is left."""
    k = keys.for_workspace(workspace_id)
    state = {text(a): text(b) for a, b in (await redis.hgetall(k.outbox)).items()}
    ids = await stream_ids(redis, workspace_id)
    return state.get("cursor") == ids[-1] and not any(n.startswith("s:") for n in state)


@contextlib.asynccontextmanager
async def outboxes(client: Client, count: int = 1, **options: Any) -> AsyncIterator[list[Outbox]]:
    """Replace the app's outbox by `count` tuned ones on the same Redis (like processes)."""
    await client.app[OUTBOX].stop()
    ctx = client.app[CTX]
    boxes = [Outbox(ctx, **options) for _ in range(count)]

    def notify(workspace_id: str) -> None:
        for box in boxes:
            box.notify(workspace_id)

    ctx.notifier.on_events = notify
    for box in boxes:
        await box.start()
    try:
        yield boxes
    finally:
        for box in boxes:
            await box.stop()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- rendering --------------------------------------------------------------------------


def test_render_types_the_data() -> None:
    fields = {
        "type": "call.cut",
        "at": "1800000000250",
        "seq": "7",
        "d:call_id": "c1",
        "d:reason": "balance",
        "d:cut_at_ms": "1800000000000",
        "d:direction": "outbound",
    }
    event = events.render("ws_00000000000000aa", "1800000000250-0", fields)
    assert event == {
        "id": "evt_00000000000000aa_1800000000250-0",
        "type": "call.cut",
        "workspace_id": "ws_00000000000000aa",
        "at": "2027-01-15T08:00:00.250Z",
        "seq": 7,
        "data": {
            "call_id": "c1",
            "reason": "balance",
            "cut_at_ms": 1_800_000_000_000,
            "cut_at": 1_800_000_000.0,
            "direction": "outbound",
        },
    }
    lifted = events.render_data({"call_id": "c1", "max_duration_s": "", "hangup_at_ms": ""})
    assert lifted == {
        "call_id": "c1",
        "max_duration_s": None,
        "hangup_at_ms": None,
        "hangup_at": None,
    }
    money = events.render_data({"amount_micros": "-1500000", "balance_after_micros": "1.8e+12"})
    assert money == {
        "amount_micros": -1_500_000,
        "amount_usd": -1.5,
        "balance_after_micros": 1_800_000_000_000,
        "balance_after_usd": 1_800_000.0,
    }
    assert events.parse_event_id("ws_00000000000000aa", event["id"]) == "1800000000250-0"


# -- delivery ---------------------------------------------------------------------------


async def test_topup_events_arrive_signed(client: Client, receiver: Receiver, redis: Redis) -> None:
    ws = await setup_ws(client, receiver)
    await topup(client, ws, 25)
    await topup(client, ws, 10)
    # signup credit + 2 x (transaction.created, wallet.recharged)
    await until(lambda: len(receiver.hits) >= 5)
    await asyncio.sleep(0.05)
    assert len(receiver.hits) == 5, [h.event["type"] for h in receiver.hits]
    hook = Webhook(ws["secret"])
    for hit in receiver.hits:
        assert hook.verify(hit.body, hit.headers) == hit.event
        assert hit.headers["webhook-id"] == hit.event["id"]
        assert hit.headers["Content-Type"] == "application/json"
    seqs = sorted(h.event["seq"] for h in receiver.hits)
    assert seqs == [1, 2, 3, 4, 5]
    by_seq = {h.event["seq"]: h.event for h in receiver.hits}
    assert [by_seq[s]["type"] for s in seqs] == [
        "transaction.created",
        "transaction.created",
        "wallet.recharged",
        "transaction.created",
        "wallet.recharged",
    ]
    created = by_seq[2]["data"]
    assert created["type"] == "recharge"
    assert created["amount_micros"] == 25_000_000
    assert created["amount_usd"] == 25.0
    assert created["balance_after_usd"] == 35.0
    assert by_seq[5]["data"]["balance_usd"] == 45.0
    ids = await stream_ids(redis, ws["id"])
    assert [by_seq[s]["id"] for s in seqs] == [events.event_id(ws["id"], i) for i in ids]


async def test_strict_order_with_one_in_flight(
    client: Client, receiver: Receiver, redis: Redis
) -> None:
    async with outboxes(client, in_flight=1):
        ws = await setup_ws(client, receiver)
        for _ in range(4):
            await topup(client, ws)
        await until(lambda: len(receiver.hits) >= 9)
        assert [h.event["seq"] for h in receiver.hits] == list(range(1, 10))
        await until(lambda: drained(redis, ws["id"]))


async def test_retried_with_the_same_id_until_accepted(
    client: Client, receiver: Receiver, redis: Redis, clock: ManualClock
) -> None:
    async def respond(event: dict[str, Any], tries: int) -> int:
        if tries == 1:
            return 500
        if tries == 2:
            await asyncio.sleep(0.5)  # longer than the sender's timeout
        return 200

    receiver.respond = respond
    async with outboxes(client, timeout_s=0.2, first_retry_s=1.0):
        # First the switch is down: connection refused.
        ws = await setup_ws(client, receiver, url=f"http://127.0.0.1:{dead_port()}/hook")
        await topup(client, ws)
        k = keys.for_workspace(ws["id"])
        ids = await stream_ids(redis, ws["id"])
        assert len(ids) == 3

        async def all_failed_once() -> bool:
            states = await redis.hmget(k.outbox, [f"s:{i}" for i in ids])
            return all(s is not None and text(s).startswith("1:") for s in states)

        await until(all_failed_once)
        await client.patch(
            "/v1/workspace", json={"switch_webhook_url": receiver.url}, headers=auth(ws["key"])
        )
        for _ in range(10):
            if await drained(redis, ws["id"]):
                break
            seen = len(receiver.hits)
            clock.advance(60)  # past any backoff so far
            await until(lambda seen=seen: len(receiver.hits) >= seen + 3, within=3)
            await asyncio.sleep(0.3)  # let the hanging try time out and be recorded
        await until(lambda: drained(redis, ws["id"]))
    tries = receiver.ids()
    assert set(tries) == {events.event_id(ws["id"], i) for i in ids}
    assert set(tries.values()) == {3}  # 500, timeout, 200: same id every time
    hook = Webhook(ws["secret"])
    for hit in receiver.hits:
        hook.verify(hit.body, hit.headers)
        assert hit.headers["webhook-id"] == hit.event["id"]


async def test_budget_exhausted_goes_to_dead_letter(
    client: Client, receiver: Receiver, redis: Redis, clock: ManualClock
) -> None:
    async def respond(event: dict[str, Any], tries: int) -> int:
        return 500 if event["seq"] == 1 else 200

    receiver.respond = respond
    async with outboxes(client, first_retry_s=1.0, budget_s=30):
        ws = await setup_ws(client, receiver)
        await topup(client, ws)
        # Later events do not wait behind the failing first one.
        await until(lambda: {h.event["seq"] for h in receiver.hits} == {1, 2, 3})
        k = keys.for_workspace(ws["id"])
        for _ in range(20):
            if await redis.xlen(k.deadletter):
                break
            seen = len(receiver.hits)
            clock.advance(10)
            await until(lambda seen=seen: len(receiver.hits) > seen, within=3)  # seq 1 again
            await asyncio.sleep(0.02)
        await until(lambda: redis.xlen(k.deadletter))
        first = (await stream_ids(redis, ws["id"]))[0]
        [(_, dead)] = await redis.xrange(k.deadletter)
        dead = {text(a): text(b) for a, b in dead.items()}
        assert dead["event_id"] == first
        assert dead["error"] == "HTTP 500"
        assert dead["type"] == "transaction.created"
        assert int(dead["attempts"]) >= 3
        await topup(client, ws)
        await until(lambda: {h.event["seq"] for h in receiver.hits} == {1, 2, 3, 4, 5})
        await until(lambda: drained(redis, ws["id"]))
        assert receiver.ids()[events.event_id(ws["id"], first)] == int(dead["attempts"])


async def test_stop_midway_and_restart_loses_nothing(
    client: Client, receiver: Receiver, redis: Redis
) -> None:
    async def respond(event: dict[str, Any], tries: int) -> int:
        await asyncio.sleep(0.03)
        return 200

    receiver.respond = respond
    ws = await setup_ws(client, receiver)
    await client.app[OUTBOX].stop()
    # The signup credit's event may have been skipped already: no URL was set at creation.
    before = set(await stream_ids(redis, ws["id"]))
    for _ in range(6):
        await topup(client, ws)  # 12 events, nobody delivering yet
    ids = {events.event_id(ws["id"], i) for i in await stream_ids(redis, ws["id"])} - {
        events.event_id(ws["id"], i) for i in before
    }
    assert len(ids) == 12
    async with outboxes(client, in_flight=1) as [first]:
        first.notify(ws["id"])
        await until(lambda: len(receiver.hits) >= 4)
    stopped_at = len(receiver.hits)
    assert stopped_at < 12
    async with outboxes(client, in_flight=2):  # a restart: a fresh worker, same Redis
        await until(lambda: ids <= set(receiver.ids()))
        await until(lambda: drained(redis, ws["id"]))
    # At least once: only the send cut short by the stop may come twice.
    assert sum(receiver.ids().values()) <= 14


async def test_dead_workers_lease_passes_to_another(
    client: Client, receiver: Receiver, redis: Redis, clock: ManualClock
) -> None:
    async with outboxes(client, lease_ms=5_000):
        ws = await setup_ws(client, receiver)
        k = keys.for_workspace(ws["id"])
        # A process that died mid-delivery: its lease is still there.
        await redis.hset(k.outbox, mapping={"owner": "dead", "until": clock.now_ms() + 5_000})
        await topup(client, ws)
        await asyncio.sleep(0.2)
        assert receiver.hits == []
        clock.advance(6)
        await until(lambda: len(receiver.hits) == 3)
        await until(lambda: drained(redis, ws["id"]))


async def test_two_workers_deliver_each_event_once(
    client: Client, receiver: Receiver, redis: Redis
) -> None:
    async with outboxes(client, count=2):
        ws = await setup_ws(client, receiver)
        await asyncio.gather(*(topup(client, ws) for _ in range(10)))
        await until(lambda: len(receiver.hits) >= 21)
        await until(lambda: drained(redis, ws["id"]))
        await asyncio.sleep(0.1)
    assert len(receiver.hits) == 21
    assert set(receiver.ids().values()) == {1}
    assert sorted(h.event["seq"] for h in receiver.hits) == list(range(1, 22))


async def test_no_url_advances_the_cursor(client: Client, redis: Redis) -> None:
    ws = await new_workspace(client)
    await topup(client, ws)
    await until(lambda: drained(redis, ws["id"]))
    assert len(await stream_ids(redis, ws["id"])) == 3  # still there for SSE


async def test_cut_of_an_ended_call_is_not_retried(
    client: Client, receiver: Receiver, redis: Redis, clock: ManualClock
) -> None:
    async def respond(event: dict[str, Any], tries: int) -> int:
        return 503 if event["type"] == "call.cut" else 200

    receiver.respond = respond
    async with outboxes(client) as [box]:
        ws = await setup_ws(client, receiver)
        k = keys.for_workspace(ws["id"])
        seq = await redis.hincrby(k.wallet, "event_seq", 1)
        # What lua/_call.lua's send_cut writes.
        await redis.xadd(
            k.events,
            {
                "type": "call.cut",
                "at": clock.now_ms(),
                "seq": seq,
                "d:call_id": "call-1",
                "d:reason": "balance",
                "d:cut_at_ms": clock.now_ms(),
                "d:direction": "outbound",
            },
        )
        box.notify(ws["id"])
        [cut_id] = (await stream_ids(redis, ws["id"]))[-1:]
        await until(lambda: redis.hget(k.outbox, f"s:{cut_id}"))  # failed once
        await redis.hset(k.ended, "call-1", "ended")
        clock.advance(5)
        await until(lambda: drained(redis, ws["id"]))
        assert int(await redis.hget(k.outbox, "dropped") or 0) == 1
    assert [h.event["type"] for h in receiver.hits].count("call.cut") == 1
    await redis.hdel(k.ended, "call-1")


async def test_hanging_webhook_does_not_slow_the_api(
    client: Client, receiver: Receiver, redis: Redis
) -> None:
    release = asyncio.Event()

    async def respond(event: dict[str, Any], tries: int) -> int:
        await release.wait()
        return 200

    receiver.respond = respond
    try:
        async with outboxes(client, timeout_s=3.0):
            ws = await setup_ws(client, receiver)
            await topup(client, ws)
            await until(lambda: len(receiver.hits) >= 1)  # the switch is hanging now
            took = [await topup(client, ws) for _ in range(10)]
            resp = await client.get("/v1/wallet", headers=auth(ws["key"]))
            assert resp.status == 200
            assert max(took) < 0.25, took
            assert sum(took) < 1.0, took
            release.set()
            await until(lambda: drained(redis, ws["id"]))
    finally:
        release.set()


async def test_malformed_event_is_dead_lettered_at_once(
    client: Client, receiver: Receiver, redis: Redis
) -> None:
    async with outboxes(client) as [box]:
        ws = await setup_ws(client, receiver)
        k = keys.for_workspace(ws["id"])
        await redis.xadd(k.events, {"type": "wallet.low_balance"})  # no at, no seq
        await topup(client, ws)
        await until(lambda: len(receiver.hits) == 3)
        await until(lambda: drained(redis, ws["id"]))
        [(_, dead)] = await redis.xrange(k.deadletter)
        assert text(dead[b"error"]).startswith("malformed event")
    assert box.owner.startswith("outbox-")

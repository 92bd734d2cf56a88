"""Auto-recharge that acts: fired inside the debiting scripts, charged by the automation worker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from gate.api.http import AUTOMATION, CTX, TICKER
from gate.clock import ManualClock
from gate.store import keys
from gate.wallet.automation import month_of
from gate.wallet.payments import Payment, SandboxProvider
from tests.conftest import PLATFORM, Client, MakeClient, auth, new_switch_key, new_workspace
from tests.helpers import adjust, all_rows, wallet_json


class Crash(Exception):
    """Stands for the Gate process dying at that point."""


class CountingProvider(SandboxProvider):
    """The sandbox, counting charge calls; `gate` (when set) holds every charge until set."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, str]] = []
        self.gate: asyncio.Event | None = None
        self.crash_keys: set[str] = set()  # charge these, then "die" before the credit
        # The session's Redis is shared: another test's workspace with a declined card comes
        # due as this test's clock runs days ahead. `only` counts one workspace's charges.
        self.only: str | None = None

    async def charge(
        self, workspace_id: str, payment_method_id: str, amount_micros: int, idempotency_key: str
    ) -> Payment:
        if self.only is None or workspace_id == self.only:
            self.calls.append((payment_method_id, amount_micros, idempotency_key))
        if self.gate is not None:
            await self.gate.wait()
        payment = await super().charge(
            workspace_id, payment_method_id, amount_micros, idempotency_key
        )
        if idempotency_key in self.crash_keys:
            self.crash_keys.discard(idempotency_key)
            raise Crash("the process died after the provider charged")
        return payment


@pytest.fixture
def provider() -> CountingProvider:
    return CountingProvider()


@pytest.fixture
async def client(make_client: MakeClient, provider: CountingProvider) -> Client:
    return await make_client(provider=provider)


async def enable(client: Client, ws: dict[str, Any], pm: str = "pm_card_visa", **ar: Any) -> None:
    body = {"payment_method_id": pm, "auto_recharge": {"enabled": True} | ar}
    resp = await client.patch("/v1/wallet/settings", json=body, headers=auth(ws["key"]))
    assert resp.status == 200, await resp.text()


async def work(client: Client, until: Callable[[], Awaitable[bool]] | None = None) -> None:
    """Run the automation worker (as its background loop would) until `until` holds."""
    automation = client.server.app[AUTOMATION]
    for _ in range(200):
        await automation.run_once()
        if until is None or await until():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the automation worker did not get there")


async def recharges(client: Client, ws: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in await all_rows(client, ws["key"]) if r["type"] == "recharge"]


async def event_types(redis: Redis, ws: dict[str, Any]) -> list[str]:
    entries = await redis.xrange(keys.for_workspace(ws["id"]).events)
    return [fields[b"type"].decode() for _, fields in entries]


async def test_200_concurrent_debits_crossing_cause_one_charge(
    client: Client, provider: CountingProvider, redis: Redis
) -> None:
    ws = await new_workspace(client)
    await enable(client, ws, threshold_usd="9.90", topup_usd=25)
    await asyncio.gather(*(adjust(client, ws, "-0.01") for _ in range(200)))

    async def credited() -> bool:
        return len(await recharges(client, ws)) >= 1

    await work(client, credited)
    await work(client)  # one more round: nothing else may fire
    assert len(provider.calls) == 1
    rows = await recharges(client, ws)
    assert len(rows) == 1
    assert rows[0]["amount_micros"] == 25_000_000
    assert rows[0]["source"] == "auto_recharge"
    shown = await wallet_json(client, ws["key"])
    assert shown["balance_micros"] == 10_000_000 - 2_000_000 + 25_000_000
    assert shown["auto_recharge"]["state"] == "idle"
    assert shown["auto_recharge"]["last_attempt_at"] is not None
    assert shown["auto_recharge"]["spent_this_month_usd"] == 25.0
    types = await event_types(redis, ws)
    assert types.count("wallet.auto_recharge_started") == 1
    assert types.count("wallet.recharged") == 1


async def test_charge_brings_available_back_above_the_threshold(
    client: Client, provider: CountingProvider
) -> None:
    ws = await new_workspace(client)
    await adjust(client, ws, "-9.50")  # $0.50 left
    await enable(client, ws, threshold_usd=100, topup_usd=10)  # enabled below: charges now
    await work(client, lambda: _has_recharge(client, ws))
    # max(topup $10, threshold - available = $99.50)
    assert provider.calls[0][1] == 99_500_000
    assert (await wallet_json(client, ws["key"]))["available_micros"] == 100_000_000


async def _has_recharge(client: Client, ws: dict[str, Any]) -> bool:
    return bool(await recharges(client, ws))


async def test_a_call_that_would_be_cut_keeps_going(
    client: Client, provider: CountingProvider, clock: ManualClock, redis: Redis
) -> None:
    ws = await new_workspace(client)
    resp = await client.post(f"/v1/workspaces/{ws['id']}/keys", json={"role": "switch"},
                             headers=PLATFORM)  # fmt: skip
    assert resp.status == 201, await resp.text()
    switch = auth((await resp.json())["key"])
    await enable(client, ws, threshold_usd=1, topup_usd=25)
    provider.gate = asyncio.Event()  # the card is slow: the charge lands later
    await adjust(client, ws, "-9.70")  # $0.30 left: crosses $1, the recharge starts
    start = {"call_id": "c1", "direction": "outbound", "from": "+14155550100",
             "to": "+14155550123"}  # fmt: skip
    resp = await client.post("/v1/calls", json=start, headers=switch)
    assert resp.status == 201, await resp.text()
    automation = asyncio.ensure_future(work(client, lambda: _has_recharge(client, ws)))
    ticker = client.server.app[TICKER]
    for _ in range(6):  # one minute: the hold cannot grow, a cut time is fixed
        clock.advance(10)
        await ticker.run_once()
    live = await client.get("/v1/calls/c1", headers=switch)
    limited = await live.json()
    cut_at = limited["cut_at"]
    assert cut_at is not None, limited  # without the recharge this call is cut at cut_at
    assert provider.calls, "the crossing started a charge"
    provider.gate.set()  # the recharge lands before the cut
    await automation
    for _ in range(9):
        clock.advance(10)
        await ticker.run_once()
    assert clock.now_ms() / 1000 > cut_at
    assert "call.cut" not in await event_types(redis, ws)
    lifted = await (await client.get("/v1/calls/c1", headers=switch)).json()
    assert lifted["cut_at"] is None
    assert lifted["max_duration_s"] is None
    resp = await client.post(
        "/v1/calls/c1/end", json={"duration_s": 150, "hangup_cause": "normal"}, headers=switch
    )
    assert resp.status == 200, await resp.text()
    assert len(await recharges(client, ws)) == 1


async def test_declines_back_off_and_a_manual_topup_resets(
    client: Client, provider: CountingProvider, clock: ManualClock, redis: Redis
) -> None:
    ws = await new_workspace(client)
    provider.only = ws["id"]
    await enable(client, ws, pm="pm_card_chargeDeclined", threshold_usd=5, topup_usd=10)
    await adjust(client, ws, "-6")
    await work(client, lambda: _state_is(client, ws, "failed"))
    shown = (await wallet_json(client, ws["key"]))["auto_recharge"]
    assert shown["last_error"] == "Your card was declined."
    waits = []
    for expected_s in (60, 600, 3600, 86400, 86400):
        wallet = await redis.hgetall(keys.for_workspace(ws["id"]).wallet)
        next_ms = int(wallet[b"ar_next"])
        waits.append((next_ms - clock.now_ms()) // 1000)
        assert waits[-1] == expected_s
        tries = len(provider.calls)
        clock.advance(expected_s - 1)
        await work(client)
        assert len(provider.calls) == tries, "no retry before the back-off is over"
        clock.advance(1)
        await work(client, lambda n=tries: _calls_above(provider, n))  # type: ignore[misc]
        await work(client, lambda: _state_is(client, ws, "failed"))
    assert (await event_types(redis, ws)).count("wallet.auto_recharge_failed") == 6
    # A manual top-up with another card ends the back-off; money is above the threshold.
    resp = await client.post(
        "/v1/wallet/topup",
        json={"amount_usd": 20, "payment_method_id": "pm_card_visa"},
        headers=auth(ws["key"]),
    )
    assert resp.status == 201
    shown = (await wallet_json(client, ws["key"]))["auto_recharge"]
    assert shown["state"] == "idle"
    assert shown["next_attempt_at"] is None


async def _state_is(client: Client, ws: dict[str, Any], state: str) -> bool:
    return bool((await wallet_json(client, ws["key"]))["auto_recharge"]["state"] == state)


async def _calls_above(provider: CountingProvider, n: int) -> bool:
    return len(provider.calls) > n


async def test_monthly_cap_stops_charges_until_raised(
    client: Client, provider: CountingProvider, clock: ManualClock, redis: Redis
) -> None:
    ws = await new_workspace(client)
    await enable(client, ws, threshold_usd=5, topup_usd=25, monthly_cap_usd=30)
    await adjust(client, ws, "-6")
    await work(client, lambda: _has_recharge(client, ws))
    await adjust(client, ws, "-26")  # below $5 again: a second $25 would pass the $30 cap
    await work(client, lambda: _state_is(client, ws, "failed"))
    assert len(provider.calls) == 1
    shown = (await wallet_json(client, ws["key"]))["auto_recharge"]
    assert shown["last_error"] == "monthly cap reached"
    _, next_month = month_of(clock.now_ms())
    wallet = await redis.hgetall(keys.for_workspace(ws["id"]).wallet)
    assert int(wallet[b"ar_next"]) == next_month
    await adjust(client, ws, "-1")  # further debits: no new charge, no new event
    await work(client)
    assert len(provider.calls) == 1
    assert (await event_types(redis, ws)).count("wallet.auto_recharge_capped") == 1
    await enable(client, ws, monthly_cap_usd=100)  # raised: the charge happens now
    await work(client, lambda: _calls_above(provider, 1))
    await work(client, lambda: _state_is(client, ws, "idle"))
    assert len(await recharges(client, ws)) == 2


async def test_charge_made_but_not_credited_is_recovered_once(
    client: Client, provider: CountingProvider, clock: ManualClock, redis: Redis
) -> None:
    """A process claims the attempt, charges the card and dies before the credit."""
    ws = await new_workspace(client)
    await enable(client, ws, threshold_usd=5, topup_usd=25)
    automation = client.server.app[AUTOMATION]
    await automation.stop()  # this process's worker plays the dead one below
    await adjust(client, ws, "-6")
    k = keys.for_workspace(ws["id"])
    ctx = client.server.app[CTX]
    month, next_month = month_of(clock.now_ms())
    reply = await ctx.scripts.call(
        "auto_recharge_claim",
        [k.ws, k.wallet, k.events],
        [clock.now_ms(), "dead-process", 30_000, month, next_month, 1_000_000_000],
    )
    assert reply[1] == b"charge"
    attempt, amount = reply[2], int(reply[3])
    await provider.charge(ws["id"], "pm_card_visa", amount, f"ar_{ws['id']}_{attempt}")
    # -- the process dies here: charged, not credited --
    await work(client)
    assert len(provider.calls) == 1, "the lease of the dead process still holds"
    assert (await wallet_json(client, ws["key"]))["auto_recharge"]["state"] == "charging"
    clock.advance(31)
    await work(client, lambda: _state_is(client, ws, "idle"))
    assert len(provider.calls) == 2  # the same idempotency key: the provider's same payment
    assert provider.calls[0][2] == provider.calls[1][2]
    assert len(provider.charges) == 1
    rows = await recharges(client, ws)
    assert len(rows) == 1
    assert rows[0]["amount_micros"] == 25_000_000
    # Settling the same payment again (a replayed worker) credits nothing.
    payment = next(iter(provider.charges.values()))
    again = await ctx.scripts.call(
        "auto_recharge_settle",
        [k.ws, k.wallet, k.ledger, k.events, k.refs, k.cuts, k.due],
        [clock.now_ms(), attempt, amount, payment.id, month, "pm_card_visa"],
    )
    assert again[0] == 1
    assert len(await recharges(client, ws)) == 1


async def test_the_background_worker_finds_the_crossing_by_itself(
    client: Client, provider: CountingProvider
) -> None:
    ws = await new_workspace(client)
    await enable(client, ws, threshold_usd=5, topup_usd=10)
    await adjust(client, ws, "-6")  # the post's events notify the worker of this process
    for _ in range(300):
        if await recharges(client, ws):
            break
        await asyncio.sleep(0.01)
    assert [r["amount_micros"] for r in await recharges(client, ws)] == [10_000_000]
    assert len(provider.calls) == 1


async def test_topup_charged_but_not_credited_is_recovered_once(
    client: Client, provider: CountingProvider, clock: ManualClock, redis: Redis
) -> None:
    ws = await new_workspace(client)
    headers = {**auth(ws["key"]), "Idempotency-Key": "crash-1"}
    body = {"amount_usd": 30, "payment_method_id": "pm_card_visa"}
    provider.crash_keys.add("crash-1")
    resp = await client.post("/v1/wallet/topup", json=body, headers=headers)
    assert resp.status == 500  # the charge went through; the credit did not happen
    assert len(provider.charges) == 1
    assert (await wallet_json(client, ws["key"]))["balance_micros"] == 10_000_000
    automation = client.server.app[AUTOMATION]
    await automation.rescan()
    await work(client)
    assert not await recharges(client, ws), "the request's claim still holds"
    clock.advance(31)  # the dead request's Idempotency-Key claim lapses
    await automation.rescan()
    await work(client, lambda: _has_recharge(client, ws))
    rows = await recharges(client, ws)
    assert [r["reference"] for r in rows] == list(provider.charges)
    assert rows[0]["amount_micros"] == 30_000_000
    # The customer's retry with the same key answers that row; nothing is charged anew.
    again = await client.post("/v1/wallet/topup", json=body, headers=headers)
    assert again.status == 201, await again.text()
    assert (await again.json())["id"] == rows[0]["id"]
    await automation.rescan()
    await work(client)
    assert len(await recharges(client, ws)) == 1
    assert len(provider.charges) == 1
    assert await redis.hlen(f"{keys.for_workspace(ws['id']).ws}:pending_topups") == 0


async def test_a_call_start_that_crosses_the_threshold_wakes_the_worker(
    client: Client, provider: CountingProvider
) -> None:
    """Issue 20: call_start's hold crossed the threshold, but Calls.start never woke the
    worker: the recharge waited for the rescan (~10 s) while later starts got 402."""
    ws = await new_workspace(client)
    await enable(client, ws, threshold_usd=5, topup_usd=20)
    await adjust(client, ws, "-4.90")  # $5.10: above the threshold, nothing fires
    await asyncio.sleep(0.5)
    assert not provider.calls
    switch = auth(await new_switch_key(client, ws["id"]))
    start = {"call_id": "cross-1", "direction": "outbound", "from": "+14155550100",
             "to": "+14155550123"}  # fmt: skip
    resp = await client.post("/v1/calls", json=start, headers=switch)
    assert resp.status == 201, await resp.text()
    # The background worker alone (no rescan within this bound: its period is 30 s).
    for _ in range(300):
        if await recharges(client, ws):
            break
        await asyncio.sleep(0.01)
    assert [r["amount_micros"] for r in await recharges(client, ws)] == [20_000_000]


async def test_a_tick_that_crosses_the_threshold_wakes_the_worker(
    client: Client, provider: CountingProvider, clock: ManualClock
) -> None:
    """The crossing may come from a tick of a live call, not only from its start."""
    ws = await new_workspace(client)
    await enable(client, ws, threshold_usd=5, topup_usd=20)
    await adjust(client, ws, "-4.70")  # $5.30: a call's one-minute hold ($0.20) stays above
    switch = auth(await new_switch_key(client, ws["id"]))
    start = {"call_id": "tick-cross", "direction": "outbound", "from": "+14155550100",
             "to": "+14155550123"}  # fmt: skip
    resp = await client.post("/v1/calls", json=start, headers=switch)
    assert resp.status == 201, await resp.text()
    await asyncio.sleep(0.3)
    assert not provider.calls, "nothing crossed yet"
    ticker = client.server.app[TICKER]
    for _ in range(12):  # two minutes of talk: $0.40 more is billed and held
        clock.advance(10)
        await ticker.run_once()
    for _ in range(300):
        if await recharges(client, ws):
            break
        await asyncio.sleep(0.01)
    assert [r["amount_micros"] for r in await recharges(client, ws)] == [20_000_000]
    resp = await client.post(
        "/v1/calls/tick-cross/end", json={"duration_s": 120, "hangup_cause": "normal"},
        headers=switch,
    )  # fmt: skip
    assert resp.status == 200, await resp.text()

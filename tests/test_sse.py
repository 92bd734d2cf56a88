"""Server-Sent Events at GET /v1/events: live, resumable, isolated, kept alive, closed cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from redis.asyncio import Redis

from gate.api import events as api_events
from gate.app import create_app
from gate.clock import ManualClock
from gate.history.check import check_all
from gate.settings import Settings
from tests.conftest import PLATFORM, Client, auth, new_workspace


@pytest.fixture
async def sse(
    aiohttp_client: Callable[..., Awaitable[Client]],
    settings: Settings,
    clock: ManualClock,
    redis: Redis,
) -> AsyncIterator[Client]:
    """The app with its open event streams tracked (what create_app does once wired)."""
    app = create_app(settings, clock=clock)
    if api_events.OPEN_STREAMS not in app:
        api_events.setup(app)
    client = await aiohttp_client(app)
    yield client
    problems, _ = await check_all(redis)
    assert not problems, problems


async def agent_key(client: Client, ws: dict[str, Any]) -> dict[str, str]:
    resp = await client.post(
        f"/v1/workspaces/{ws['id']}/keys", json={"role": "agent"}, headers=auth(ws["key"])
    )
    assert resp.status == 201, await resp.text()
    return auth((await resp.json())["key"])


async def topup(client: Client, ws: dict[str, Any], usd: int = 10) -> None:
    resp = await client.post(
        "/v1/wallet/topup",
        json={"amount_usd": usd, "payment_method_id": "pm_card_visa"},
        headers=auth(ws["key"]),
    )
    assert resp.status == 201, await resp.text()


async def frame(resp: ClientResponse, within: float = 3.0) -> dict[str, str]:
    """The next SSE frame as {field: value}; a comment line comes back as {"": text}."""
    raw = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), within)
    fields: dict[str, str] = {}
    for line in raw.decode().strip("\n").split("\n"):
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")
    return fields


async def next_event(resp: ClientResponse, within: float = 3.0) -> dict[str, Any]:
    """The next event frame (skipping retry: and comments), checked for consistency."""
    while True:
        fields = await frame(resp, within)
        if "data" not in fields:
            continue
        event: dict[str, Any] = orjson.loads(fields["data"])
        assert fields["id"] == event["id"]
        assert fields["event"] == event["type"]
        return event


async def open_stream(client: Client, headers: dict[str, str], query: str = "") -> ClientResponse:
    resp = await client.get(f"/v1/events{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    return resp


async def test_agent_receives_events_live(sse: Client) -> None:
    ws = await new_workspace(sse)
    resp = await open_stream(sse, await agent_key(sse, ws))
    await topup(sse, ws, 25)
    created = await next_event(resp)
    recharged = await next_event(resp)
    # Only new events: the signup credit of before the connection is not replayed.
    assert (created["type"], created["seq"]) == ("transaction.created", 2)
    assert created["workspace_id"] == ws["id"]
    assert created["data"]["amount_usd"] == 25.0
    assert created["at"].endswith("Z")
    assert (recharged["type"], recharged["seq"]) == ("wallet.recharged", 3)
    resp.close()


async def test_resume_with_last_event_id_has_no_gaps_or_repeats(sse: Client) -> None:
    ws = await new_workspace(sse)
    agent = await agent_key(sse, ws)
    for _ in range(3):
        await topup(sse, ws)  # seq 1 (signup) .. 7
    resp = await open_stream(sse, agent, "?from=0")
    first = [await next_event(resp) for _ in range(3)]
    resp.close()
    assert [e["seq"] for e in first] == [1, 2, 3]
    await topup(sse, ws)  # 8, 9 while disconnected
    again = await open_stream(sse, {**agent, "Last-Event-ID": first[-1]["id"]})
    rest = [await next_event(again) for _ in range(6)]
    assert [e["seq"] for e in rest] == [4, 5, 6, 7, 8, 9]
    await topup(sse, ws)
    assert [(await next_event(again))["seq"] for _ in range(2)] == [10, 11]
    again.close()
    by_query = await open_stream(sse, agent, f"?last_event_id={rest[-1]['id']}")
    await topup(sse, ws)
    assert (await next_event(by_query))["seq"] == 10
    by_query.close()


async def test_keep_alive_comment(sse: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_events, "KEEPALIVE_S", 0.1)
    ws = await new_workspace(sse)
    resp = await open_stream(sse, await agent_key(sse, ws))
    assert await frame(resp) == {"retry": str(api_events.RETRY_MS)}
    assert await frame(resp, within=1.0) == {"": "keep-alive"}
    assert await frame(resp, within=1.0) == {"": "keep-alive"}
    await topup(sse, ws)
    assert (await next_event(resp))["type"] == "transaction.created"
    resp.close()


async def test_other_workspaces_events_never_appear(sse: Client) -> None:
    mine = await new_workspace(sse, "Mine")
    other = await new_workspace(sse, "Other")
    resp = await open_stream(sse, await agent_key(sse, mine), "?from=0")
    await topup(sse, other)
    await topup(sse, mine)
    seen = [await next_event(resp) for _ in range(3)]
    assert {e["workspace_id"] for e in seen} == {mine["id"]}
    assert [e["seq"] for e in seen] == [1, 2, 3]
    resp.close()
    # A platform key names the workspace; another workspace's key cannot.
    platform = await open_stream(sse, PLATFORM, f"?workspace_id={other['id']}&from=0")
    assert (await next_event(platform))["workspace_id"] == other["id"]
    platform.close()
    denied = await sse.get(
        f"/v1/events?workspace_id={other['id']}", headers=await agent_key(sse, mine)
    )
    assert denied.status == 404


async def test_auth_and_bad_input(sse: Client) -> None:
    ws = await new_workspace(sse)
    assert (await sse.get("/v1/events")).status == 401
    assert (await sse.get("/v1/events", headers=auth("gk_nope"))).status == 401
    platform = await sse.get("/v1/events", headers=PLATFORM)  # which workspace?
    assert platform.status == 400
    missing = await sse.get("/v1/events?workspace_id=ws_0000000000000000", headers=PLATFORM)
    assert missing.status == 404
    agent = await agent_key(sse, ws)
    bad_id = await sse.get("/v1/events", headers={**agent, "Last-Event-ID": "evt_other_1-0"})
    assert bad_id.status == 400
    assert (await bad_id.json())["error"]["code"] == "validation_error"
    assert (await sse.get("/v1/events?from=5", headers=agent)).status == 400


async def test_shutdown_ends_open_streams(sse: Client) -> None:
    ws = await new_workspace(sse)
    resp = await open_stream(sse, await agent_key(sse, ws))
    await frame(resp)  # retry:
    streams = sse.app[api_events.OPEN_STREAMS]
    assert streams.count == 1
    await asyncio.wait_for(api_events.close_all(sse.app), 2)
    assert streams.count == 0
    assert await asyncio.wait_for(resp.content.read(), 2) == b""


async def test_client_disconnect_ends_the_stream(
    sse: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_events, "BLOCK_MS", 50)
    ws = await new_workspace(sse)
    resp = await open_stream(sse, await agent_key(sse, ws))
    await frame(resp)
    streams = sse.app[api_events.OPEN_STREAMS]
    assert streams.count == 1
    resp.close()
    for _ in range(100):
        if streams.count == 0:
            break
        await asyncio.sleep(0.01)
    assert streams.count == 0


@pytest.mark.parametrize(
    "last_id",
    [
        "18446744073709551616-0",  # 2^64: no stream id is that large
        "0-18446744073709551616",
        "evt_{hex}_99999999999999999999-0",
        "\uff11\uff12-0",  # non-ASCII digits
        "12",
        "evt_{hex}_",
    ],
)
async def test_last_event_id_out_of_range_is_400(sse: Client, last_id: str) -> None:
    ws = await new_workspace(sse)
    agent = await agent_key(sse, ws)
    value = last_id.format(hex=ws["id"].removeprefix("ws_"))
    resp = await sse.get("/v1/events", headers={**agent, "Last-Event-ID": value})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["code"] == "validation_error"
    assert "Last-Event-ID" in body["error"]["message"]


async def test_last_event_id_at_the_top_of_the_range_is_accepted(sse: Client) -> None:
    ws = await new_workspace(sse)
    agent = await agent_key(sse, ws)
    top = f"evt_{ws['id'].removeprefix('ws_')}_18446744073709551615-18446744073709551615"
    resp = await open_stream(sse, {**agent, "Last-Event-ID": top})
    assert resp.status == 200
    resp.close()

"""Cuts are the signals a switch must not miss: a stale cut is retried like any other."""

from __future__ import annotations

from typing import Any

from gate.api.http import TICKER
from gate.clock import ManualClock
from tests.conftest import Client, auth, new_switch_key
from tests.test_delivery import Receiver, outboxes, receiver, setup_ws, until  # noqa: F401


async def test_stale_cut_is_retried_until_accepted(
    client: Client,
    receiver: Receiver,  # noqa: F811
    clock: ManualClock,
) -> None:
    async def respond(event: dict[str, Any], tries: int) -> int:
        return 500 if event["type"] == "call.cut" and tries == 1 else 200

    receiver.respond = respond
    async with outboxes(client, first_retry_s=1.0):
        ws = await setup_ws(client, receiver)
        sw = auth(await new_switch_key(client, ws["id"]))
        body = {"call_id": "c1", "direction": "outbound", "from": "+14155550100",
                "to": "+14155550123"}  # fmt: skip
        assert (await client.post("/v1/calls", json=body, headers=sw)).status == 201
        clock.advance(5)
        hb = {"elapsed_s": 5, "seq": 1}
        assert (await client.post("/v1/calls/c1/heartbeat", json=hb, headers=sw)).status == 200
        clock.advance(100)  # heartbeats stopped: the sweeper ends the call and cuts it
        await client.app[TICKER].run_once()

        def cut_tries() -> int:
            return sum(1 for h in receiver.hits if h.event["type"] == "call.cut")

        await until(lambda: cut_tries() == 1)
        clock.advance(3)  # past the first back-off
        await until(lambda: cut_tries() == 2)
        assert receiver.hits[-1].event["data"]["reason"] == "stale"

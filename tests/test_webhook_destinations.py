"""Tenants' webhook URLs reach public addresses only, when set and again at every delivery."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from gate.api.http import OUTBOX
from gate.delivery.destinations import check_literal, non_public
from gate.settings import SettingsError, load
from gate.store import keys
from tests.conftest import Client, MakeClient, auth, new_workspace
from tests.test_delivery import Receiver, receiver, topup, until

__all__ = ["receiver"]

NON_PUBLIC = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # the cloud metadata service
    "100.100.100.200",  # shared address space (one cloud's metadata service)
    "0.0.0.0",
    "224.0.0.1",
    "::1",
    "fe80::1",
    "fd00:ec2::254",  # a cloud's IPv6 metadata service
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::",
]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_public_addresses_are_named(address: str) -> None:
    assert non_public(address) is not None
    url = f"http://[{address}]:8080/hook" if ":" in address else f"http://{address}/hook"
    with pytest.raises(OSError, match="refused to deliver"):
        check_literal(url)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"])
def test_public_addresses_pass(address: str) -> None:
    assert non_public(address) is None


def test_the_setting_parses_booleans_and_refuses_the_rest() -> None:
    assert load({"GATE_WEBHOOK_ALLOW_PRIVATE": "1"}).webhook_allow_private is True
    assert load({"GATE_WEBHOOK_ALLOW_PRIVATE": "off"}).webhook_allow_private is False
    assert load({}).webhook_allow_private is False  # production default: refused
    with pytest.raises(SettingsError, match="GATE_WEBHOOK_ALLOW_PRIVATE"):
        load({"GATE_WEBHOOK_ALLOW_PRIVATE": "maybe"})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:8080/hook",
        "http://api.localhost/hook",
        "https://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "http://[::ffff:192.168.0.1]/hook",
    ],
)
async def test_setting_a_private_webhook_url_is_400_and_changes_nothing(
    make_client: MakeClient, url: str
) -> None:
    client = await make_client(webhook_allow_private=False)
    ws = await new_workspace(client)
    resp = await client.patch(
        "/v1/workspace", json={"switch_webhook_url": url}, headers=auth(ws["key"])
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "validation_error"
    assert error["field"] == "switch_webhook_url"
    assert "public" in error["message"] and "GATE_WEBHOOK_ALLOW_PRIVATE" in error["message"]
    shown = await (await client.get("/v1/workspace", headers=auth(ws["key"]))).json()
    assert shown["switch_webhook_url"] is None


async def test_a_public_webhook_url_is_accepted(make_client: MakeClient) -> None:
    client = await make_client(webhook_allow_private=False)
    ws = await new_workspace(client)
    url = "https://switch.example.com/gate/hook"
    resp = await client.patch(
        "/v1/workspace", json={"switch_webhook_url": url}, headers=auth(ws["key"])
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["switch_webhook_url"] == url


async def retried_not_delivered(client: Client, redis: Redis, rec: Receiver, url: str) -> None:
    """A URL that got into Redis anyway (set before the rule, or its DNS changed since)."""
    ws = await new_workspace(client)
    rec.workspace_id = ws["id"]
    k = keys.for_workspace(ws["id"])
    await redis.hset(k.ws, "switch_webhook_url", url)
    client.app[OUTBOX].url_changed(ws["id"])
    await topup(client, ws)

    async def retry_scheduled() -> bool:
        return any(f.startswith(b"s:") for f in await redis.hkeys(k.outbox))

    await until(retry_scheduled)  # the delivery was tried, and failed
    assert rec.hits == []


async def test_delivery_refuses_a_name_that_resolves_to_loopback(
    make_client: MakeClient, redis: Redis, receiver: Receiver
) -> None:
    client = await make_client(webhook_allow_private=False)
    url = receiver.url.replace("127.0.0.1", "localhost")
    assert "localhost" in url
    await retried_not_delivered(client, redis, receiver, url)


async def test_delivery_refuses_a_loopback_literal(
    make_client: MakeClient, redis: Redis, receiver: Receiver
) -> None:
    client = await make_client(webhook_allow_private=False)
    await retried_not_delivered(client, redis, receiver, receiver.url)


async def test_the_operators_global_url_is_trusted(
    make_client: MakeClient, redis: Redis, receiver: Receiver
) -> None:
    client = await make_client(webhook_allow_private=False, switch_webhook_url=receiver.url)
    ws = await new_workspace(client)
    receiver.workspace_id = ws["id"]
    await topup(client, ws)
    await until(lambda: receiver.hits)

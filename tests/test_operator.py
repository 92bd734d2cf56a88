"""The platform operator: find workspaces, suspend, resume and close them (platform key only)."""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from redis.asyncio import Redis

from gate.app import create_app
from gate.cli import main
from gate.clock import ManualClock
from gate.history.check import check_all, check_workspace
from gate.settings import Settings
from gate.store import keys, redis_client
from gate.store.redis_proc import RedisClusterProcs, RedisServer
from gate.tenancy.directory import member
from gate.wallet.service import pending_topups_key
from tests.conftest import PLATFORM, Client, MakeClient, auth, new_switch_key
from tests.test_organizations import office, org

SERVICE_SWITCH = "operator-service-switch-key-0123456789"


def call(call_id: str) -> dict[str, Any]:
    return {"call_id": call_id, "direction": "outbound", "from": "+14155550100",
            "to": "+14155550199", "service": "voice"}  # fmt: skip


async def find(client: Client, query: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/workspaces?{query}", headers=PLATFORM)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_find_workspaces_by_name_id_organization_and_page_through(
    client: Client, clock: ManualClock
) -> None:
    tag = secrets.token_hex(4)
    # "Newest first" runs across every workspace of the session's Redis: other tests' clocks
    # may stand days ahead, so this test's workspaces are made decades later than any.
    clock.advance(30 * 365 * 86400)
    acme = await org(client, f"Acme {tag}")
    offices = []
    for city in ("NY", "SF", "LA"):
        offices.append(await office(client, acme, f"Op{tag} {city}"))
        clock.advance(1)
    lone = await office(client, None, f"Op{tag} Lone")

    by_name = await find(client, f"q=op{tag}")  # a name prefix, any case
    assert {w["id"] for w in by_name["data"]} == {o["id"] for o in [*offices, lone]}
    row = next(w for w in by_name["data"] if w["id"] == lone["id"])
    assert row["balance_usd"] == 10.0 and row["state"] == "active"
    assert row["live_calls"] == 0 and row["last_activity_at"] is not None  # the signup credit
    assert (await find(client, f"q={lone['id']}"))["data"][0]["name"] == f"Op{tag} Lone"

    seen: list[str] = []
    cursor = ""
    for _ in range(5):  # one office a page, in id order, until the cursor runs out
        page = await find(client, f"organization_id={acme}&limit=1&cursor={cursor}")
        seen += [w["id"] for w in page["data"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == sorted(o["id"] for o in offices)

    # Every workspace, newest first, a page at a time: the newest is the lone office.
    newest = await find(client, "limit=1")
    assert newest["data"][0]["id"] == lone["id"] and newest["next_cursor"]
    second = await find(client, f"limit=1&cursor={newest['next_cursor']}")
    assert second["data"][0]["id"] == offices[-1]["id"]

    # A rename moves the workspace in the name index; the old name finds it no more.
    resp = await client.patch(f"/v1/workspace?id={lone['id']}", json={"name": f"Zz{tag}"},
                              headers=PLATFORM)  # fmt: skip
    assert resp.status == 200
    assert [w["id"] for w in (await find(client, f"q=zz{tag}"))["data"]] == [lone["id"]]
    assert lone["id"] not in [w["id"] for w in (await find(client, f"q=op{tag}"))["data"]]

    orgs = await client.get("/v1/organizations?limit=200", headers=PLATFORM)
    assert orgs.status == 200
    mine = next(o for o in (await orgs.json())["data"] if o["id"] == acme)
    assert mine["name"] == f"Acme {tag}"
    assert sorted(o["id"] for o in mine["offices"]) == sorted(o["id"] for o in offices)
    assert mine["total_balance_usd"] == 30.0


async def test_operator_routes_refuse_workspace_keys_and_bad_input(client: Client) -> None:
    ws = await office(client, None, "Tenant")
    admin = auth(ws["key"])
    for method, path in (("GET", "/v1/workspaces"), ("GET", f"/v1/workspaces/{ws['id']}"),
                         ("POST", f"/v1/workspaces/{ws['id']}/suspend"),
                         ("POST", f"/v1/workspaces/{ws['id']}/resume"),
                         ("POST", f"/v1/workspaces/{ws['id']}/close"),
                         ("GET", "/v1/organizations")):  # fmt: skip
        resp = await client.request(method, path, json={"reason": "x"}, headers=admin)
        assert resp.status == 403, (path, await resp.text())
    resp = await client.get("/v1/workspaces?colour=red", headers=PLATFORM)
    assert resp.status == 400 and "colour" in (await resp.json())["error"]["message"]
    resp = await client.get("/v1/workspaces?cursor=%%%", headers=PLATFORM)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_cursor"
    resp = await client.post(f"/v1/workspaces/{ws['id']}/suspend", json={}, headers=PLATFORM)
    assert resp.status == 400  # a suspension says why
    resp = await client.post("/v1/workspaces/ws_00000000deadbeef/suspend",
                             json={"reason": "abuse"}, headers=PLATFORM)  # fmt: skip
    assert resp.status == 404


async def test_find_the_workspace_behind_a_call_a_number_and_a_customer(
    make_client: MakeClient, redis: Redis
) -> None:
    client = await make_client(switch_key=SERVICE_SWITCH)
    ws = await office(client, None, "Caller")
    cid = f"{secrets.token_hex(6)}@10.0.0.9"
    start = await client.post("/v1/calls", json=call(cid) | {"workspace_id": ws["id"]},
                              headers=auth(SERVICE_SWITCH))  # fmt: skip
    assert start.status == 201, await start.text()
    found = await find(client, f"call_id={quote(cid, safe='')}")
    assert [w["id"] for w in found["data"]] == [ws["id"]]
    assert found["data"][0]["live_calls"] == 1
    end = await client.post(f"/v1/calls/{quote(cid, safe='')}/end", json={"duration_s": 3},
                            headers=auth(SERVICE_SWITCH))  # fmt: skip
    assert end.status == 200

    number = "+1415555" + str(secrets.randbelow(10**4)).zfill(4)
    rent = await client.post("/v1/numbers", json={"number": number}, headers=auth(ws["key"]))
    assert rent.status == 201, await rent.text()
    assert [w["id"] for w in (await find(client, f"number={quote(number)}"))["data"]] == [ws["id"]]
    gone = await client.delete(f"/v1/numbers/{quote(number)}", headers=auth(ws["key"]))
    assert gone.status == 200
    assert (await find(client, f"number={quote(number)}"))["data"] == []

    # A customer the provider made for the workspace (as the Stripe provider records it).
    customer = f"cus_{secrets.token_hex(6)}"
    await redis.hset(f"{keys.for_workspace(ws['id']).ws}:stripe", "customer", customer)
    await redis.zadd(keys.DIRECTORY.customers, {member(customer, ws["id"]): 0})
    assert [w["id"] for w in (await find(client, f"customer={customer}"))["data"]] == [ws["id"]]
    # A stale term (its record says otherwise) is never a hit.
    await redis.zadd(keys.DIRECTORY.customers, {f"cus_stale\x00{ws['id']}": 0})
    assert (await find(client, "customer=cus_stale"))["data"] == []


async def test_suspend_refuses_starts_reads_go_on_and_resume_lifts_it(client: Client) -> None:
    ws = await office(client, None, "Abuser")
    switch = auth(await new_switch_key(client, ws["id"]))
    path = f"/v1/workspaces/{ws['id']}"
    live = await client.post("/v1/calls", json=call("before-1"), headers=switch)
    assert live.status == 201

    resp = await client.post(f"{path}/suspend", json={"reason": "toll fraud"}, headers=PLATFORM)
    assert resp.status == 200, await resp.text()
    refused = await client.post("/v1/calls", json=call("after-1"), headers=switch)
    assert refused.status == 402
    error = (await refused.json())["error"]
    assert error["code"] == "workspace_suspended" and error["suspended_by"] == "platform"
    assert "suspended by the platform (toll fraud)" in error["message"]
    charge = await client.post("/v1/charges", json={"charge_id": "c1", "service": "sms",
                               "text": "hi", "to": "+14155550199"}, headers=switch)  # fmt: skip
    assert charge.status == 402, await charge.text()
    # Reads go on; the call already up is kept (live_calls "keep", the default).
    assert (await client.get("/v1/wallet", headers=auth(ws["key"]))).status == 200
    assert (await client.get("/v1/calls/before-1", headers=auth(ws["key"]))).status == 200
    shown = await (await client.get(path, headers=PLATFORM)).json()
    assert (shown["state"], shown["hold_reason"], shown["live_calls"]) == (
        "suspended",
        "toll fraud",
        1,
    )
    assert "webhook_secret" not in shown["settings"]
    held = await find(client, "state=suspended&limit=200")
    assert ws["id"] in [w["id"] for w in held["data"]]

    again = await client.post(f"{path}/suspend", json={"reason": "twice"}, headers=PLATFORM)
    assert again.status == 409
    assert (await again.json())["error"]["state"] == "suspended"

    assert (await client.post(f"{path}/resume", headers=PLATFORM)).status == 200
    assert (await client.post("/v1/calls", json=call("after-2"), headers=switch)).status == 201
    again = await client.post(f"{path}/resume", headers=PLATFORM)
    assert again.status == 409 and (await again.json())["error"]["state"] == "active"
    for cid in ("before-1", "after-2"):
        resp = await client.post(f"/v1/calls/{cid}/end", json={"duration_s": 5}, headers=switch)
        assert resp.status == 200


async def test_suspend_can_cut_live_calls_billed_to_now(
    client: Client, clock: ManualClock, redis: Redis
) -> None:
    ws = await office(client, None, "Ended")
    switch = auth(await new_switch_key(client, ws["id"]))
    assert (await client.post("/v1/calls", json=call("up-1"), headers=switch)).status == 201
    clock.advance(42)
    resp = await client.post(f"/v1/workspaces/{ws['id']}/suspend",
                             json={"reason": "abuse", "live_calls": "end"},
                             headers=PLATFORM)  # fmt: skip
    assert resp.status == 200, await resp.text()
    ended = (await resp.json())["calls_ended"]
    assert [c["call_id"] for c in ended] == ["up-1"] and ended[0]["duration_s"] == 42
    assert ended[0]["flag"] == "platform_cut"
    # The switch is told to hang up...
    events = await redis.xrange(keys.for_workspace(ws["id"]).events)
    cuts = [e for _, e in events if e[b"type"] == b"call.cut"]
    assert [(c[b"d:call_id"], c[b"d:reason"]) for c in cuts] == [(b"up-1", b"platform")]
    # ...and the seconds it took to do so are billed by its own end (late_end), not dropped.
    clock.advance(8)
    late = await client.post("/v1/calls/up-1/end", json={"duration_s": 50}, headers=switch)
    assert late.status == 200 and (await late.json())["duration_s"] == 50


async def test_close_ends_calls_releases_numbers_refunds_and_revokes(
    client: Client, redis: Redis
) -> None:
    ws = await office(client, None, "Closing")
    admin = auth(ws["key"])
    switch = auth(await new_switch_key(client, ws["id"]))
    assert (await client.post("/v1/calls", json=call("live-1"), headers=switch)).status == 201
    number = "+1415666" + str(secrets.randbelow(10**4)).zfill(4)
    assert (await client.post("/v1/numbers", json={"number": number}, headers=admin)).status == 201
    path = f"/v1/workspaces/{ws['id']}"

    # A top-up between its write-ahead record and its credit: the close waits for it.
    k = keys.for_workspace(ws["id"])
    await redis.hset(pending_topups_key(ws["id"]), "in-flight", "{}")
    resp = await client.post(f"{path}/close", json={"reason": "contract ended"}, headers=PLATFORM)
    assert resp.status == 409, await resp.text()
    assert (await resp.json())["error"]["code"] == "payment_in_flight"
    refused = await client.post("/v1/calls", json=call("new-1"), headers=switch)
    assert refused.status == 402  # closing: nothing new starts meanwhile
    pay = {"amount_usd": 10, "payment_method_id": "pm_card_visa"}
    topup = await client.post("/v1/wallet/topup", headers=admin | {"Idempotency-Key": "t1"},
                              json=pay)  # fmt: skip
    assert topup.status == 402, await topup.text()
    await redis.hdel(pending_topups_key(ws["id"]), "in-flight")

    resp = await client.post(f"{path}/close", json={"reason": "contract ended"}, headers=PLATFORM)
    assert resp.status == 200, await resp.text()
    statement = (await resp.json())["statement"]
    assert statement["calls_ended"] == ["live-1"]
    assert statement["numbers_released"] == [number]
    refund = statement["refund"]
    assert refund["status"] == "owed" and refund["amount_micros"] > 0
    assert statement["final_balance_micros"] == 0
    row = await client.get(f"/v1/wallet/transactions?type=refund&workspace_id={ws['id']}",
                           headers=PLATFORM)  # fmt: skip
    rows = (await row.json())["data"]
    assert [r["amount_micros"] for r in rows] == [-refund["amount_micros"]]

    # Every key is revoked; the platform still reads everything, history included.
    assert (await client.get("/v1/wallet", headers=admin)).status == 401
    assert (await client.post("/v1/calls", json=call("new-2"), headers=switch)).status == 401
    shown = await (await client.get(path, headers=PLATFORM)).json()
    assert shown["state"] == "closed" and shown["keys"] == [] and shown["numbers"] == []
    assert shown["statement"]["refund"]["transaction_id"] == refund["transaction_id"]
    again = await client.post(f"{path}/close", json={"reason": "again"}, headers=PLATFORM)
    assert again.status == 409 and (await again.json())["error"]["state"] == "closed"
    reopen = await client.post(f"{path}/keys", json={"role": "admin"}, headers=PLATFORM)
    assert reopen.status == 402  # no key is made for a closed workspace
    assert await check_workspace(redis, ws["id"]) == []
    assert await redis.hlen(k.keys) == 0


async def test_gate_check_covers_closed_workspaces(client: Client, redis: Redis) -> None:
    ws = await office(client, None, "Checked")
    path = f"/v1/workspaces/{ws['id']}"
    assert (
        await client.post(f"{path}/close", json={"reason": "done"}, headers=PLATFORM)
    ).status == 200
    k = keys.for_workspace(ws["id"])
    await redis.hset(k.keys, "deadbeef", "admin key_000000000000")  # a key after the close
    try:
        problems = await check_workspace(redis, ws["id"])
        assert problems == [f"{ws['id']}: closed but still has 1 API key(s)"]
    finally:
        await redis.hdel(k.keys, "deadbeef")


def test_cli_verbs_find_suspend_resume_and_close(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gate workspace ...` in this process (the subprocess path is tests/test_cli.py's)."""
    monkeypatch.setenv("GATE_REDIS_URL", redis_server.url)

    def run(*args: str, code: int = 0) -> dict[str, Any]:
        done = main(list(args))
        out = capsys.readouterr()
        assert done == code, out.out + out.err
        return orjson.loads(out.out) if code == 0 else {"stderr": out.err}

    name = f"Cli{secrets.token_hex(4)}"
    wid = run("workspace", "create", name)["id"]
    assert [w["id"] for w in run("workspace", "list", "--q", name.lower())["data"]] == [wid]
    assert run("workspace", "show", wid)["state"] == "active"
    assert run("workspace", "suspend", wid, "--reason", "chargebacks")["state"] == "suspended"
    again = run("workspace", "suspend", wid, "--reason", "twice", code=1)
    assert "the workspace is suspended" in again["stderr"]
    assert run("workspace", "resume", wid)["state"] == "active"
    closed = run("workspace", "close", wid, "--reason", "asked to leave")
    assert closed["statement"]["refund"]["amount_usd"] == 10.0
    assert run("workspace", "show", wid)["statement"]["reason"] == "asked to leave"
    assert main(["check", wid]) == 0
    assert "all invariants hold" in capsys.readouterr().out


@pytest.mark.cluster
async def test_the_operator_verbs_on_a_cluster(
    aiohttp_client: Any, redis_cluster: RedisClusterProcs, settings: Settings, clock: ManualClock
) -> None:
    """The directory's slot, each workspace's slot and the org's slot differ on a cluster:
    find, suspend, close and the audit log work across them."""
    client = await aiohttp_client(
        create_app(replace(settings, redis_url=redis_cluster.url), clock=clock)
    )
    tag = secrets.token_hex(4)
    acme = await org(client, f"Cluster {tag}")
    offices = [await office(client, acme, f"Cl{tag} {i}") for i in range(4)]
    found = await find(client, f"q=cl{tag}")
    assert {w["id"] for w in found["data"]} == {o["id"] for o in offices}
    assert len((await find(client, f"organization_id={acme}"))["data"]) == 4
    first, last = offices[0], offices[-1]
    path = f"/v1/workspaces/{first['id']}"
    assert (
        await client.post(f"{path}/suspend", json={"reason": "r"}, headers=PLATFORM)
    ).status == 200
    assert first["id"] in [
        w["id"] for w in (await find(client, "state=suspended&limit=200"))["data"]
    ]
    resp = await client.post(f"/v1/workspaces/{last['id']}/close", json={"reason": "done"},
                             headers=PLATFORM)  # fmt: skip
    assert resp.status == 200, await resp.text()
    resp = await client.get(f"/v1/audit?workspace_id={first['id']}", headers=PLATFORM)
    log = await resp.json()
    assert [e["action"] for e in log["data"]] == ["workspace.suspended", "workspace.created"]
    cluster = await redis_client.connect(redis_cluster.url)
    try:
        problems, _ = await check_all(cluster, [o["id"] for o in offices])
        assert not problems, problems
    finally:
        await cluster.aclose()

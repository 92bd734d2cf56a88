"""Per-key rate limits on mutating routes: 429 rate_limited with Retry-After, nothing changed."""

from __future__ import annotations

import pytest

from gate.errors import RateLimited
from gate.tenancy.limits import KeyLimiter
from tests.conftest import PLATFORM, MakeClient, auth, new_workspace


def test_bucket_allows_the_burst_then_the_rate() -> None:
    limiter = KeyLimiter(rate=10, burst=3)
    for _ in range(3):
        limiter.take("key_a", now=100.0)
    with pytest.raises(RateLimited) as refused:
        limiter.take("key_a", now=100.0)
    assert refused.value.retry_after_s == 1
    limiter.take("key_b", now=100.0)  # another key has its own bucket
    limiter.take("key_a", now=100.11)  # one token back after 1/rate s
    with pytest.raises(RateLimited):
        limiter.take("key_a", now=100.12)
    KeyLimiter(rate=0, burst=1).take("key_a")  # 0: off


async def test_mutating_requests_beyond_the_rate_get_429_and_change_nothing(
    make_client: MakeClient,
) -> None:
    client = await make_client(rate_limit_per_s=1, rate_limit_burst=3)
    ws = await new_workspace(client)
    admin = auth(ws["key"])
    for n in range(3):
        resp = await client.patch("/v1/workspace", json={"name": f"n{n}"}, headers=admin)
        assert resp.status == 200, await resp.text()
    resp = await client.patch("/v1/workspace", json={"name": "too many"}, headers=admin)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    error = (await resp.json())["error"]
    assert error["code"] == "rate_limited"
    assert error["retry_after_s"] == 1
    assert "retry after 1 s" in error["message"]
    shown = await (await client.get("/v1/workspace", headers=admin)).json()  # reads: not limited
    assert shown["name"] == "n2"

    # Another key of the same workspace has its own bucket.
    resp = await client.post(
        f"/v1/workspaces/{ws['id']}/keys", json={"role": "admin"}, headers=PLATFORM
    )
    other = auth((await resp.json())["key"])
    assert (await client.patch("/v1/workspace", json={"name": "x"}, headers=other)).status == 200
    # The platform key and the platform's switch keys are not limited here.
    for _ in range(5):
        await new_workspace(client, "More")
    resp = await client.post(
        f"/v1/workspaces/{ws['id']}/keys", json={"role": "switch"}, headers=PLATFORM
    )
    switch = auth((await resp.json())["key"])
    for seq in range(1, 6):
        resp = await client.post(
            "/v1/calls/nope/heartbeat", json={"elapsed_s": 1, "seq": seq}, headers=switch
        )
        assert resp.status != 429

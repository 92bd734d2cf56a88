"""Shared fixtures: a private redis-server per session and a Gate app per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gate.app import create_app
from gate.clock import ManualClock
from gate.history.check import check_all
from gate.settings import Settings
from gate.store import keys
from gate.store.redis_proc import RedisServer
from gate.wallet.payments import PaymentProvider
from tests.redis_fixtures import redis_cluster, redis_server

__all__ = ["redis_cluster", "redis_server"]

PLATFORM_KEY = "test-platform-key-0123456789"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        platform_key=PLATFORM_KEY,
        auth_cache_s=0.0,
        webhook_allow_private=True,  # the tests' receivers listen on 127.0.0.1
        rate_limit_per_s=0,  # tests fire hundreds of changes at once; test_rate_limits sets it
        # A loaded 2-core CI machine stalls the event loop past 250 ms at times; the outage
        # tests set their own deadline.
        redis_timeout_ms=2000,
        # Likewise for a start's default deadline (500 ms): the deadline tests send timeout_ms.
        start_timeout_ms=5000,
        # Tests price calls from the first second; tests/test_plans.py assigns plans itself.
        default_plan="none",
    )


Client = TestClient  # type: ignore[type-arg]


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[Client]],
    settings: Settings,
    clock: ManualClock,
    redis: Redis,
) -> AsyncIterator[Client]:
    before = await redis.smembers(keys.WORKSPACES)
    app = create_app(settings, clock=clock)
    test_client = await aiohttp_client(app)
    yield test_client
    await assert_invariants(redis, before)


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]],
    settings: Settings,
    clock: ManualClock,
    redis: Redis,
) -> AsyncIterator[MakeClient]:
    """A factory of test clients whose app runs with some settings changed (and, given, its
    own payment provider); after the test, docs/design.md §11 for every workspace it created."""

    before = await redis.smembers(keys.WORKSPACES)

    async def make(*, provider: PaymentProvider | None = None, **overrides: Any) -> Client:
        app = create_app(replace(settings, **overrides), clock=clock, payments=provider)
        return await aiohttp_client(app)

    yield make
    await assert_invariants(redis, before)


async def assert_invariants(redis: Redis, before: set[bytes]) -> None:
    """docs/design.md §11 holds for every workspace this test created (`gate check` logic)."""
    created = [m.decode() for m in await redis.smembers(keys.WORKSPACES) - before]
    problems, _ = await check_all(redis, created)
    assert not problems, problems


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


PLATFORM = auth(PLATFORM_KEY)


async def new_switch_key(client: Client, workspace_id: str) -> str:
    """A switch key for the workspace, issued as switch keys are: by the platform."""
    resp = await client.post(
        f"/v1/workspaces/{workspace_id}/keys", json={"role": "switch"}, headers=PLATFORM
    )
    assert resp.status == 201, await resp.text()
    key: str = (await resp.json())["key"]
    return key


async def new_workspace(client: Client, name: str = "Acme") -> dict[str, Any]:
    """Create a workspace through the API; returns its JSON (id, key...)."""
    resp = await client.post("/v1/workspaces", json={"name": name}, headers=PLATFORM)
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


# Under CI=true a skip is a failure: a green CI must not hide that the Kamailio, browser,
# PostgreSQL or compose tests never ran. Each skip's reason names the tool and how to install it.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} would skip, and CI=true allows no skips: {reason}\n"
            "`make test` installs every system package the suite needs; run it, or install "
            "what the reason names, and run again."
        )
    return report

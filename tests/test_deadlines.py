"""Every byte has a deadline (issue 21 item 5): request bodies, a slow second request on a
kept-alive connection, the unauthenticated Stripe webhook; a client gone mid-body is one
DEBUG line and a counter, not an ERROR traceback. Raw sockets on the runner `gate serve`
uses, as tests/test_protocol_edges.py does."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from gate import metrics
from gate.settings import Settings
from tests.conftest import PLATFORM_KEY
from tests.helpers import listening


@pytest.fixture
async def port(settings: Settings) -> AsyncIterator[int]:
    quick = replace(
        settings,
        header_timeout_s=1,
        keepalive_timeout_s=30,
        body_timeout_s=1,
        unauthenticated_body_timeout_s=1,
        payments="stripe",
        stripe_api_key="sk_test_x",
        stripe_webhook_secret="whsec_dGVzdA==",
    )
    async with listening(quick) as chosen:
        yield chosen


async def held_for(port: int, first: bytes, then: bytes = b"") -> tuple[float, bytes]:
    """Send `first`, then trickle `then` a byte a second; how long until Gate hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(first)
    answer = b""

    async def trickle() -> None:
        for byte in then:
            await asyncio.sleep(1)
            writer.write(bytes([byte]))

    feeder = asyncio.ensure_future(trickle())
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 20):
            answer += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        feeder.cancel()
        writer.close()
    return time.perf_counter() - started, answer


BODY = b'{"name": "a very slow workspace name"}'


@pytest.mark.parametrize(
    "path, auth",
    [
        ("/v1/workspaces", f"Authorization: Bearer {PLATFORM_KEY}\r\n"),
        ("/v1/providers/stripe/webhook", "Stripe-Signature: t=1,v1=00\r\n"),
    ],
)
async def test_a_trickled_body_is_cut_off_at_its_deadline(port: int, path: str, auth: str) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    before = metrics.BODY_TIMEOUTS._value.get()
    waited, answer = await held_for(port, head + BODY[:2], BODY[2:])
    assert waited < 8, f"held {waited:.1f} s"  # deadline 1 s; on main: until the body ended
    assert b" 408 " in answer[:20] and b"request_timeout" in answer, answer[:200]
    assert metrics.BODY_TIMEOUTS._value.get() == before + 1


async def test_the_stripe_webhook_checks_its_signature_header_before_reading(port: int) -> None:
    head = (
        "POST /v1/providers/stripe/webhook HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    waited, answer = await held_for(port, head + BODY[:1], BODY[1:])
    assert waited < 3 and b" 400 " in answer[:20], (waited, answer[:200])


async def test_a_slow_second_request_on_a_kept_alive_connection_is_bounded(port: int) -> None:
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    waited, answer = await held_for(port, first + b"GET /hea", b"lthz HTTP/1.1\r\nHost: x\r\n")
    assert answer.count(b"HTTP/1.1 200") == 1
    assert waited < 8, f"held {waited:.1f} s (keep-alive timeout 30 s)"
    assert b" 408 " in answer


async def test_a_client_gone_mid_body_is_one_debug_line(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = metrics.CLIENT_DISCONNECTS._value.get()
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"POST /v1/workspaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PLATFORM_KEY}"
            f"\r\nContent-Length: 100\r\n\r\n{{"
        ).encode()
    )
    await asyncio.sleep(0.3)
    writer.close()
    for _ in range(50):
        if metrics.CLIENT_DISCONNECTS._value.get() > before:
            break
        await asyncio.sleep(0.05)
    assert metrics.CLIENT_DISCONNECTS._value.get() == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]

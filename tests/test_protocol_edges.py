"""The connection layer under the app: header deadline, idle keep-alive, JSON protocol errors.

These run the runner `gate serve` uses on a free port and talk raw HTTP over sockets, since
the test client cannot send malformed requests or dribble headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest

from gate import __version__
from gate.settings import Settings
from tests.helpers import close_writer, listening


@pytest.fixture
async def port(settings: Settings) -> AsyncIterator[int]:
    quick = replace(settings, header_timeout_s=1, keepalive_timeout_s=2)
    async with listening(quick) as chosen:
        yield chosen


async def exchange(port: int, raw: bytes) -> tuple[int, bytes]:
    """Send raw bytes; returns the status and body of the answer (the connection then closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        await close_writer(writer)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",  # NUL byte
        b"GET /healthz HTTP/1.1\r\nHost: x\rX-Bad: y\r\n\r\n",  # bare CR
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\r\n  folded\r\n\r\n",  # folded header
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
    ],
)
async def test_protocol_errors_answer_the_json_error_shape_without_traceback(
    port: int, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    status, body = await exchange(port, raw)
    assert status == 400
    error = orjson.loads(body)["error"]
    assert error["code"] == "bad_request"
    assert error["message"].startswith("malformed HTTP request")
    assert "send a well-formed HTTP/1.1 request" in error["message"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_slow_headers_get_408_and_the_connection_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        await close_writer(writer)
    waited = time.perf_counter() - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    assert 0.9 < waited < 3.0, waited


HEALTHZ = orjson.dumps({"status": "ok", "version": __version__})  # /healthz's whole body


async def test_a_complete_request_is_not_cut_by_the_header_deadline(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(3):  # idle a while, past the header deadline, within the keep-alive
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert await asyncio.wait_for(reader.readexactly(len(HEALTHZ)), 5) == HEALTHZ
            await asyncio.sleep(0.6)
    finally:
        await close_writer(writer)


async def test_idle_keep_alive_connections_are_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await asyncio.wait_for(reader.readexactly(len(HEALTHZ)), 5)
        started = time.perf_counter()
        rest = await asyncio.wait_for(reader.read(), 5)  # EOF when the server closes it
        waited = time.perf_counter() - started
    finally:
        await close_writer(writer)
    assert rest == b""
    assert 1.5 < waited < 4.0, waited

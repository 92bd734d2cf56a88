"""The HTTP connection layer under the app: timeouts for slow clients and JSON protocol errors.

aiohttp answers a request it cannot parse (a NUL byte, a bare CR, a folded header) itself,
before any middleware runs, in plain text and with a logged traceback; it closes an idle
keep-alive connection only after an hour and has no deadline for the request headers. The
runner made here fixes the three:

- the request headers must arrive within `GATE_HEADER_TIMEOUT_S` of the connection's start
  (else `408` and the connection is closed: a client dribbling headers cannot hold it);
- an idle keep-alive connection is closed after `GATE_KEEPALIVE_TIMEOUT_S`;
- a malformed request gets the API's one error shape, `{"error": {"code", "message"}}`,
  and one log line at INFO without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gate.settings import Settings

log = logging.getLogger("gate.api.protocol")

# What a request line or header may carry that must never reach a log: aiohttp quotes the
# raw bytes it could not parse (b'Bearer gk_...'), and key or secret shapes anywhere.
_RAW_BYTES = re.compile(r"""b(['"]).*?(?:\1|$)""")
_SECRET_SHAPES = re.compile(
    r"(?i)(bearer\s+\S+|gk_\w+|whsec_\S+|[sr]k_(?:live|test)_\w+|authorization:\s*\S+)"
)


def redact(text: str) -> str:
    """`text` without raw request bytes or anything shaped like a key or a secret."""
    return _SECRET_SHAPES.sub("<redacted>", _RAW_BYTES.sub("<request bytes>", text))


class RedactingFilter(logging.Filter):
    """Redacts aiohttp's own log records (protocol errors quote the request's bytes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if redact(str(exc)) != str(exc):  # the traceback would quote them again
                clean += f" ({type(exc).__name__}: {redact(str(exc))})"
                record.exc_info = None
                record.exc_text = None
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = RedactingFilter()


def redact_aiohttp_logs() -> None:
    """Install the filter on every logger aiohttp writes to (idempotent)."""
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal"):
        logging.getLogger(name).addFilter(_FILTER)


_TIMEOUT_BODY = orjson.dumps(
    {
        "error": {
            "code": "request_timeout",
            "message": "the request headers did not arrive in time; send the whole request "
            "at once on a new connection",
        }
    }
)
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class GateProtocol(RequestHandler):
    """aiohttp's request handler with a header deadline and JSON answers to protocol errors."""

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._armed_at = 0  # requests whose headers were in when the timer was armed

    def _arm(self) -> None:
        if self.header_timeout > 0:
            self._armed_at = self._request_count
            self._header_timer = self._loop.call_later(self.header_timeout, self._headers_late)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None and self._request_count > self._armed_at:
            self._header_timer.cancel()  # the request's headers are in
            self._header_timer = None
        elif self._header_timer is None and data and self._idle():
            # the first bytes of a next request on a kept-alive connection: its headers have
            # the same deadline as the first request's, not the idle keep-alive timeout
            self._arm()

    def _idle(self) -> bool:
        """No request is being handled or waits to be (the next bytes start a new one)."""
        return self._current_request is None and not self._messages and not self._force_close

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is not None and self._request_count == self._armed_at and self._idle():
            log.info("closed a connection whose request headers took over %gs", self.header_timeout)
            transport.write(_TIMEOUT_RESPONSE)
            self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        reason = redact((message or exc.message or type(exc).__name__).splitlines()[0])[:200]
        log.info("malformed request from %s: %s", request.remote, reason)
        body = {
            "error": {
                "code": "bad_request" if status == 400 else f"http_{status}",
                "message": f"malformed HTTP request ({reason}); send a well-formed HTTP/1.1 "
                "request: no NUL or bare CR, no folded header lines",
            }
        }
        response = web.Response(
            status=status, body=orjson.dumps(body), content_type="application/json"
        )
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return GateProtocol(self, loop=self._loop, **self._kwargs)


class GateRunner(web.AppRunner):
    """An AppRunner whose connections are GateProtocol's."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same state, one method more specific
        return server


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner `gate serve` uses: the settings' timeouts, no access log."""
    redact_aiohttp_logs()
    return GateRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=settings.keepalive_timeout_s,
        header_timeout=settings.header_timeout_s,
    )

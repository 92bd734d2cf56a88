"""The baseline server: aiohttp + uvloop answering every POST with one constant JSON body."""

from __future__ import annotations

import argparse

import orjson
import uvloop
from aiohttp import web

# The shape of a start answer, so the bytes on the wire are like Gate's.
BODY = orjson.dumps(
    {
        "call_id": "c-000000",
        "decision": "allow",
        "rate_per_min_usd": 0.2,
        "increment": "60/6",
        "granted_s": 60,
        "max_duration_s": None,
        "hangup_at": 1800000060,
        "balance_usd": 10.0,
        "available_usd": 9.8,
    }
)


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()

"""A full run of `gate serve` at DEBUG, outage included, logs none of its secrets.

Keys, webhook secrets, the Redis password, and the Stripe and SMTP credentials an operator
may configure must never reach the log, whatever happens: success, refusals, forged keys,
malformed requests, a Redis outage, shutdown.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gate.store.redis_proc import RedisServer, free_port
from tests.helpers import close_writer
from tests.test_cli import GATE, clean_env, wait_healthy

PLATFORM_KEY = "plat-SECRET-4f1d2c3b4a59687766554433"
REDIS_PASSWORD = "redis-SECRET-9a8b7c6d5e4f"
STRIPE_KEY = "sk_test_SECRET_51Habcdefghijklmnop"
STRIPE_WEBHOOK_SECRET = "whsec_SECRET_stripe_0123456789"
SMTP_PASSWORD = "smtp-SECRET-pass-1234"
FORGED = "gk_ws_0123456789abcdef_FORGED-SECRET-xyz"


def spawn(port: int, tmp_path: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [GATE, "serve", "--port", str(port), "--data-dir", str(tmp_path / "var")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_a_full_run_logs_no_secret(tmp_path: Path) -> None:
    redis = RedisServer.start(tmp_path / "redis", extra=["--requirepass", REDIS_PASSWORD])
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = TestServer(receiver_app)
    await receiver.start_server()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gate.log"
    env = clean_env(
        GATE_PLATFORM_KEY=PLATFORM_KEY,
        GATE_REDIS_URL=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis.port}/0",
        GATE_LOG_LEVEL="DEBUG",
        GATE_WEBHOOK_ALLOW_PRIVATE="1",
        GATE_PAYMENTS="sandbox",
        GATE_STRIPE_API_KEY=STRIPE_KEY,
        GATE_STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET,
        GATE_SMTP_URL=f"smtp://alerts:{SMTP_PASSWORD}@127.0.0.1:1",
    )
    proc = spawn(port, tmp_path, log, env)
    secrets = [PLATFORM_KEY, REDIS_PASSWORD, STRIPE_KEY, STRIPE_WEBHOOK_SECRET, SMTP_PASSWORD]
    secrets.append(FORGED)
    platform = {"Authorization": f"Bearer {PLATFORM_KEY}"}
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, proc, log)
            async with http.post(
                f"{base}/v1/workspaces", json={"name": "w"}, headers=platform
            ) as resp:
                ws = await resp.json()
            admin = {"Authorization": f"Bearer {ws['key']}"}
            async with http.post(
                f"{base}/v1/workspaces/{ws['id']}/keys", json={"role": "switch"}, headers=platform
            ) as resp:
                switch_key = (await resp.json())["key"]
            switch = {"Authorization": f"Bearer {switch_key}"}
            url = str(receiver.make_url("/hook"))
            async with http.patch(
                f"{base}/v1/workspace", json={"switch_webhook_url": url}, headers=admin
            ) as resp:
                webhook_secret = (await resp.json())["webhook_secret"]
            secrets += [ws["key"], switch_key, webhook_secret]
            # The random parts alone too (at least 8 characters: a short piece may occur anywhere).
            pieces = [s.rsplit("_", 1)[-1] for s in (ws["key"], switch_key, webhook_secret)]
            secrets += [p for p in pieces if len(p) >= 8]
            topup = {"amount_usd": 10, "payment_method_id": "pm_card_visa"}
            async with http.post(
                f"{base}/v1/wallet/topup", json=topup, headers={**admin, "Idempotency-Key": "t1"}
            ) as resp:
                assert resp.status == 201, await resp.text()
            start = {"call_id": "c1", "direction": "outbound", "from": "+14155550100"}
            start["to"] = "+14155550123"
            async with http.post(f"{base}/v1/calls", json=start, headers=switch) as resp:
                assert resp.status == 201, await resp.text()
            async with http.post(
                f"{base}/v1/calls/c1/end", json={"duration_s": 30}, headers=switch
            ) as resp:
                assert resp.status == 200, await resp.text()
            # Refusals: a forged key, a key in the wrong header, a bad body, a bad method.
            for headers in ({"Authorization": f"Bearer {FORGED}"}, {"X-Api-Key": FORGED}):
                async with http.get(f"{base}/v1/wallet", headers=headers) as resp:
                    assert resp.status == 401
            async with http.patch(
                f"{base}/v1/workspace", json={"webhook_secret": FORGED}, headers=admin
            ) as resp:
                assert resp.status == 400
            for _ in range(100):
                if received:
                    break
                await asyncio.sleep(0.05)
            assert received, "the webhook never arrived"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET /v1/wallet HTTP/1.1\r\nAuthorization: Bearer {FORGED}\x00\r\n\r\n".encode()
            )
            await reader.read()
            await close_writer(writer)
            # A header over aiohttp's 8,190-byte limit: it quoted its first bytes at INFO.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            long_auth = f"Bearer {ws['key']}" + "x" * 9000
            writer.write(f"GET /v1/wallet HTTP/1.1\r\nAuthorization: {long_auth}\r\n\r\n".encode())
            answer = await reader.read()
            await close_writer(writer)
            assert b" 400 " in answer[:20], answer[:100]
            assert ws["key"].encode() not in answer  # nor echoed back
            # A Redis outage while requests arrive.
            redis.stop()
            async with http.get(f"{base}/v1/wallet", headers=admin) as resp:
                assert resp.status == 503
        proc.terminate()
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        redis.stop()
        await receiver.close()
    text = log.read_text()
    assert "redis unavailable" in text  # the run did go through the outage, at DEBUG
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"secrets in the log: {leaked}\n{text}"
    shapes = re.findall(r"gk_\w{8,}|whsec_\w{8,}|[sr]k_(?:live|test)_\w{8,}|Bearer \S{8,}", text)
    assert not shapes, f"key or secret shapes in the log: {shapes}"

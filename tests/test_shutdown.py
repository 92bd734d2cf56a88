"""`gate serve` stops cleanly whatever is down: SIGTERM in a Redis outage exits 0, no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import aiohttp

from gate.store.redis_proc import RedisServer, free_port
from tests.test_cli import GATE, PLATFORM_KEY, clean_env, wait_healthy
from tests.test_serve_workers import spawn

PLATFORM = {"Authorization": f"Bearer {PLATFORM_KEY}"}


async def test_sigterm_during_a_redis_outage_stops_everything_and_exits_0(tmp_path: Path) -> None:
    redis = RedisServer.start(tmp_path / "redis")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gate.log"
    proc = spawn(port, tmp_path, log, GATE_REDIS_URL=redis.url, GATE_DEFAULT_PLAN="none")
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, proc, log)
            async with http.post(
                f"{base}/v1/workspaces", json={"name": "w"}, headers=PLATFORM
            ) as resp:
                assert resp.status == 201, await resp.text()
                ws = await resp.json()
            async with http.post(
                f"{base}/v1/workspaces/{ws['id']}/adjustments",
                json={"amount_usd": "10", "type": "adjustment", "description": "funds"},
                headers=PLATFORM,
            ) as resp:
                assert resp.status == 201, await resp.text()
            async with http.post(
                f"{base}/v1/workspaces/{ws['id']}/keys", json={"role": "switch"}, headers=PLATFORM
            ) as resp:
                switch = {"Authorization": f"Bearer {(await resp.json())['key']}"}
            async with http.post(
                f"{base}/v1/calls",
                json={"call_id": "live-1", "direction": "outbound",
                      "from": "+14155550100", "to": "+14155550123"},
                headers=switch,
            ) as resp:  # fmt: skip
                assert resp.status == 201, await resp.text()
        os.kill(redis.pid, signal.SIGKILL)  # the worst moment: a live call, Redis gone at once
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        text = log.read_text()
        assert "Traceback" not in text, text
        assert "gate stopping" in text, text
        assert "private redis-server" not in text  # GATE_REDIS_URL was set: nothing embedded
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        redis.stop()


def test_an_unreachable_archive_is_one_line_naming_the_url_and_exit_1(tmp_path: Path) -> None:
    redis = RedisServer.start(tmp_path / "redis")
    port = free_port()
    closed = free_port()  # nothing listens there
    try:
        done = subprocess.run(
            [GATE, "serve", "--port", str(port), "--data-dir", str(tmp_path / "var")],
            env=clean_env(
                GATE_PLATFORM_KEY=PLATFORM_KEY,
                GATE_REDIS_URL=redis.url,
                GATE_DATABASE_URL=f"postgresql://gate:s3cret-pw@127.0.0.1:{closed}/ledger",
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        redis.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    assert "s3cret-pw" not in out, out
    lines = [line for line in out.splitlines() if "ledger archive" in line and "ERROR" in line]
    assert len(lines) == 1, out
    assert f"127.0.0.1:{closed}/ledger" in lines[0] and "GATE_DATABASE_URL" in lines[0], lines

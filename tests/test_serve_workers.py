"""`gate serve` as an operator runs it: several workers on one port, SIGHUP rate reloads."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import aiohttp

from gate.store.redis_proc import free_port
from tests.test_calls import CARD
from tests.test_cli import GATE, PLATFORM_KEY, clean_env, wait_healthy


def spawn(port: int, tmp_path: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [GATE, "serve", "--port", str(port), "--data-dir", str(tmp_path / "var")],
            env=clean_env(GATE_PLATFORM_KEY=PLATFORM_KEY, **env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_two_workers_share_the_port_and_reload_on_sighup(tmp_path: Path) -> None:
    rates = tmp_path / "rates.toml"
    rates.write_text(CARD.format(inc="60/6", fee="0"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gate.log"
    proc = spawn(port, tmp_path, log, GATE_WORKERS="2", GATE_RATES=str(rates))
    platform = {"Authorization": f"Bearer {PLATFORM_KEY}"}
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, proc, log)
            for _ in range(200):  # the spawned worker imports Gate afresh: wait for it
                if log.read_text().count("gate listening") == 2:
                    break
                await asyncio.sleep(0.05)
            async with http.post(f"{base}/v1/workspaces", json={"name": "w"},
                                 headers=platform) as resp:  # fmt: skip
                ws = await resp.json()
            async with http.post(f"{base}/v1/workspaces/{ws['id']}/keys",
                                 json={"role": "switch"}, headers=platform) as resp:  # fmt: skip
                switch = {"Authorization": f"Bearer {(await resp.json())['key']}"}

            async def rates_seen(tag: str) -> set[float]:
                seen = set()
                for i in range(40):  # new connections: both workers answer some
                    async with aiohttp.ClientSession() as fresh, fresh.post(
                        f"{base}/v1/calls",
                        json={"call_id": f"{tag}{i}", "direction": "outbound",
                              "from": "+14155550100", "to": "+14155550123"},
                        headers=switch,
                    ) as resp:  # fmt: skip
                        assert resp.status == 201, await resp.text()
                        seen.add((await resp.json())["rate_per_min_usd"])
                    async with http.post(f"{base}/v1/calls/{tag}{i}/end",
                                         json={"duration_s": 0}, headers=switch):  # fmt: skip
                        pass
                return seen

            assert await rates_seen("a") == {0.2}
            rates.write_text(CARD.format(inc="60/6", fee="0").replace('"0.10"', '"0.30"'))
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            assert await rates_seen("b") == {0.4}
            assert log.read_text().count("rate card reloaded") == 2, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

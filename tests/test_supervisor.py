"""`gate serve` with workers: a dead worker comes back, no orphan serves on, one gate per port."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import aiohttp

from gate.store.redis_proc import free_port
from tests.test_cli import GATE, PLATFORM_KEY, alive, clean_env, read, wait_healthy


def spawn(port: int, tmp_path: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [GATE, "serve", "--port", str(port), "--data-dir", str(tmp_path / "var")],
            env=clean_env(GATE_PLATFORM_KEY=PLATFORM_KEY, **env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def pids_listening(log: Path, count: int, within_s: float = 30.0) -> list[int]:
    """The pids of the first `count` "gate listening" lines, waiting for them."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        pids = [int(p) for p in re.findall(r"gate listening on \S+ \(pid (\d+)\)", read(log))]
        if len(pids) >= count:
            return pids
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} processes listening:\n{read(log)}")


async def gone(pid: int, within_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if not alive(pid):
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"pid {pid} still alive after {within_s} s")


async def test_workers_are_supervised_and_never_orphaned(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gate.log"
    main = spawn(port, tmp_path, log, GATE_WORKERS="2")
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, main, log)
            first = await pids_listening(log, 2)
            (worker,) = [p for p in first if p != main.pid]

            # kill -9 of a worker: logged, and another one starts in its place.
            os.kill(worker, signal.SIGKILL)
            killed = time.monotonic()
            pids = await pids_listening(log, 3)
            restarted_s = time.monotonic() - killed
            text = read(log)
            assert f"worker pid {worker} exited with code -9" in text, text
            assert f"started in place of pid {worker}" in text
            (replacement,) = [p for p in pids if p not in first]
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200

            # A second gate on the same port refuses to start, and says why.
            second_log = tmp_path / "second.log"
            second = spawn(port, tmp_path / "second", second_log, GATE_WORKERS="2")
            assert second.wait(30) != 0
            assert "another gate is serving" in read(second_log)
            assert main.poll() is None

            # kill -9 of the main process: the worker follows at once, the port is free.
            main.send_signal(signal.SIGKILL)
            main.wait(10)
            orphan_s = await gone(replacement, within_s=10.0)
        print(f"\nworker back in {restarted_s:.2f} s; orphan gone {orphan_s:.2f} s after the main")
        # ~1 s on a quiet machine (a spawned worker imports Gate afresh); 14 s seen with the
        # machine's two cores loaded 3.5-fold, so the bound is what a loaded CI still meets.
        assert restarted_s < 30.0
    finally:
        if main.poll() is None:
            main.kill()
            main.wait(10)


async def test_sigterm_drains_main_and_workers(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gate.log"
    main = spawn(port, tmp_path, log, GATE_WORKERS="2")
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, main, log)
            pids = await pids_listening(log, 2)
        main.send_signal(signal.SIGTERM)
        assert main.wait(30) == 0, read(log)
        for pid in pids:
            assert not alive(pid)
        text = read(log)
        assert text.count("gate stopping") == 2, text
        assert "exited with code" not in text  # a drained worker is not "restarted"
    finally:
        if main.poll() is None:
            main.kill()
            main.wait(10)

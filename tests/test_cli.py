"""The `gate` command: the real `gate serve` with its private redis-server, and the admin verbs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from gate.store import keys
from gate.store.redis_proc import RedisServer, free_port

GATE = str(Path(sys.executable).parent / "gate")
PLATFORM_KEY = "cli-test-platform-key-0123456789"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any GATE_* setting of the machine, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATE_")}
    return {**env, **extra}


def gate(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def read(path: Path) -> str:
    return path.read_text()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for every purpose but its process-table entry.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


@contextlib.contextmanager
def serving(data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    log = (data_dir / "gate.log").open("wb")
    proc = subprocess.Popen(
        [GATE, "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=clean_env(GATE_PLATFORM_KEY=PLATFORM_KEY, GATE_LOG_LEVEL="INFO"),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:  # the test failed before stopping it: do not leak it
            proc.kill()
            proc.wait(10)
        log.close()


async def wait_healthy(http: aiohttp.ClientSession, base: str, proc: Any, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"gate serve exited early:\n{read(log)}"
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{base}/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gate serve did not answer /healthz:\n{read(log)}")


async def test_serve_with_a_private_redis(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gate.log"
    with serving(tmp_path, port) as proc:
        redis_pid = None
        try:
            async with aiohttp.ClientSession() as http:
                await wait_healthy(http, base, proc, log)
                text = read(log)
                assert "GATE_REDIS_URL is unset: started a private redis-server" in text
                url = read(tmp_path / "redis" / "url").strip()
                assert url.startswith("redis://127.0.0.1:")
                assert not url.endswith(":6379")
                private = Redis.from_url(url)
                try:
                    info = await private.info("server")
                    redis_pid = int(info["process_id"])
                    assert (await private.config_get("appendonly"))["appendonly"] == "yes"
                finally:
                    await private.aclose()

                platform = {"Authorization": f"Bearer {PLATFORM_KEY}"}
                async with http.post(
                    f"{base}/v1/workspaces", json={"name": "Served"}, headers=platform
                ) as resp:
                    assert resp.status == 201, await resp.text()
                    ws = await resp.json()
                admin = {"Authorization": f"Bearer {ws['key']}", "Idempotency-Key": "cli-1"}
                topup = {"amount_usd": "15.25", "payment_method_id": "pm_card_visa"}
                async with http.post(f"{base}/v1/wallet/topup", json=topup, headers=admin) as resp:
                    assert resp.status == 201, await resp.text()
                    assert (await resp.json())["balance_after_micros"] == 25_250_000
                async with http.get(f"{base}/readyz") as resp:
                    assert resp.status == 200
            aof = list((tmp_path / "redis").rglob("*.aof"))
            assert aof, f"no AOF file under {tmp_path / 'redis'}"

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, read(log)
            assert "gate stopping" in read(log)
            assert "private redis-server stopped" in read(log)
            assert not alive(redis_pid), "the private redis-server outlived gate"
            assert not (tmp_path / "redis" / "url").exists()
            # The money survives the restart: the AOF holds it.
            assert b"25250000" in b"".join(p.read_bytes() for p in aof)
        finally:
            if redis_pid is not None and alive(redis_pid):
                os.kill(redis_pid, signal.SIGKILL)


@pytest.fixture
def session_env(redis_server: RedisServer) -> dict[str, str]:
    return clean_env(GATE_REDIS_URL=redis_server.url)


def run_json(*args: str, env: dict[str, str]) -> dict[str, Any]:
    done = gate(*args, env=env)
    assert done.returncode == 0, done.stderr
    body: dict[str, Any] = orjson.loads(done.stdout)
    return body


async def test_admin_verbs(session_env: dict[str, str], redis: Redis) -> None:
    created = run_json("workspace", "create", "From the CLI", env=session_env)
    wid = created["id"]
    assert created["name"] == "From the CLI"
    assert created["role"] == "admin"
    assert created["key"].startswith(f"gk_{wid}_")
    assert await redis.sismember(keys.WORKSPACES, wid)

    key = run_json("key", "create", wid, "switch", env=session_env)
    assert key["role"] == "switch"
    assert key["key"].startswith(f"gk_{wid}_")
    stored = await redis.hgetall(keys.for_workspace(wid).keys)
    assert f"switch {key['id']}".encode() in stored.values()

    shown = run_json("wallet", "show", wid, env=session_env)
    assert shown["workspace_id"] == wid
    assert shown["balance_usd"] == 10.0
    assert shown["balance_micros"] == 10_000_000
    assert shown["status"] == "active"

    for verb in (("key", "create", "ws_00000000deadbeef", "agent"), ("wallet", "show", "nope")):
        done = gate(*verb, env=session_env)
        assert (done.returncode, done.stderr) == (1, "gate: no such workspace\n")
    done = gate("wallet", "show", wid, env={**session_env, "GATE_REDIS_URL": "redis://127.0.0.1:1"})
    assert done.returncode == 1
    assert done.stderr.startswith("gate: Redis error: ")
    assert len(done.stderr.splitlines()) == 1
    done = gate("key", "create", wid, "platform", env=session_env)
    assert done.returncode == 2  # argparse: not a role a key can be made with

    done = gate("check", wid, env=session_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked 1 workspace(s): all invariants hold" in done.stdout

    wallet = keys.for_workspace(wid).wallet
    await redis.hincrby(wallet, "balance", 1)  # money from nowhere: no ledger row
    try:
        for args in (("check", wid), ("check",)):
            done = gate(*args, env=session_env)
            assert done.returncode == 1, done.stdout
            mismatches = [line for line in done.stdout.splitlines() if line.startswith("MISMATCH")]
            expected = f"MISMATCH {wid}: balance 10000001 != ledger sum 10000000"
            if args == ("check", wid):
                assert mismatches == [expected]
            else:  # the session's Redis holds other tests' workspaces too
                assert expected in mismatches
    finally:
        await redis.hincrby(wallet, "balance", -1)
    assert gate("check", wid, env=session_env).returncode == 0


@pytest.mark.parametrize(
    ("env", "args", "variable"),
    [
        ({"GATE_PORT": "abc"}, ("serve",), "GATE_PORT"),
        ({"GATE_PORT": "70000"}, ("serve",), "GATE_PORT"),
        ({}, ("serve", "--port", "0"), "GATE_PORT"),
        ({"GATE_TICK_S": "0"}, ("serve",), "GATE_TICK_S"),
        ({"GATE_SIGNUP_CREDIT_USD": "1e400"}, ("serve",), "GATE_SIGNUP_CREDIT_USD"),
        ({"GATE_SIGNUP_CREDIT_USD": "ten"}, ("serve",), "GATE_SIGNUP_CREDIT_USD"),
        ({"GATE_REDIS_URL": "http://localhost"}, ("check",), "GATE_REDIS_URL"),
        ({"GATE_SWITCH_WEBHOOK_URL": "ftp://x"}, ("serve",), "GATE_SWITCH_WEBHOOK_URL"),
        ({"GATE_LOG_LEVEL": "LOUD"}, ("serve",), "GATE_LOG_LEVEL"),
        ({"GATE_RATES": "/nonexistent/rates.toml"}, ("serve",), "GATE_RATES"),
    ],
)
def test_invalid_setting_exits_2(env: dict[str, str], args: tuple[str, ...], variable: str) -> None:
    done = gate(*args, env=clean_env(**env), timeout=10)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gate: invalid setting: ")
    assert variable in lines[0]
    assert done.stdout == ""


async def test_mail_list_dead_and_retry(session_env: dict[str, str], redis: Redis) -> None:
    from gate.delivery.mail import dead_key

    wid = run_json("workspace", "create", "Dead mail", env=session_env)["id"]
    job = "low_balance|1800000000000|500000|500000|1000000"
    record = {"job": job, "tries": 5, "error": "RuntimeError: 550", "dead_at_ms": 1}
    await redis.hset(dead_key(wid), "7", orjson.dumps(record))
    done = gate("mail", "list", "--dead", wid, env=session_env)
    assert done.returncode == 0, done.stderr
    [listed] = orjson.loads(done.stdout)
    assert (listed["id"], listed["kind"], listed["tries"]) == (f"{wid}:7", "low_balance", 5)
    missing = gate("mail", "retry", f"{wid}:8", env=session_env)
    assert missing.returncode == 1 and "gate mail list --dead" in missing.stderr
    done = gate("mail", "retry", f"{wid}:7", env=session_env)
    assert done.returncode == 0, done.stderr
    wallet = keys.for_workspace(wid).wallet
    assert await redis.hget(wallet, "mail:7") == job.encode()
    assert await redis.hget(wallet, "mail_pending") == b"1"
    assert not await redis.exists(dead_key(wid))

"""Checks that the shipped docker-compose.yml is valid, when a compose client is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def _compose_command() -> list[str] | None:
    """Return the argv prefix of a working compose client (plugin or standalone), or None.

    `docker compose config` is pure client work, so no Docker engine is needed; only the
    compose client itself decides whether these tests can run.
    """
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for argv in candidates:
        try:
            done = subprocess.run([*argv, "version"], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return argv
    return None


def _config(
    env_extra: dict[str, str], drop: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    argv = _compose_command()
    if argv is None:
        pytest.skip(
            "docker compose client not available (neither `docker compose` nor docker-compose)"
        )
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra)
    return subprocess.run(
        [*argv, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_is_valid() -> None:
    done = _config({"GATE_PLATFORM_KEY": "test-platform-key"})
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_requires_platform_key() -> None:
    done = _config({}, drop=("GATE_PLATFORM_KEY",))
    assert done.returncode != 0
    assert "GATE_PLATFORM_KEY" in done.stdout + done.stderr

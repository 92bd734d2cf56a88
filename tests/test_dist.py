"""`make dist`'s wheel and sdist install into a fresh venv the way the Docker image installs them.

The steps are the Dockerfile's: the runtime pins exported from uv.lock, installed with
--require-hashes, then Gate's wheel with --no-deps. The installed `gate` must then serve (the
Lua scripts, the rate card and the page are package data), report its version, and say how to
get the load-test harness it does not carry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import aiohttp
import pytest

from gate import __version__
from gate.store.redis_proc import RedisServer, free_port
from tests.test_cli import PLATFORM_KEY, clean_env, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
UV = (
    str(ROOT / ".tools" / "bin" / "uv") if (ROOT / ".tools/bin/uv").exists() else shutil.which("uv")
)

pytestmark = [
    pytest.mark.skipif(UV is None, reason="uv not found: `make test` installs it in .tools/"),
    pytest.mark.timeout(300),
]


def sh(*argv: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(ROOT / ".venv")},
    )  # fmt: skip
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    assert UV is not None
    out = tmp_path_factory.mktemp("dist")
    sh(UV, "build", "-q", "--out-dir", str(out))
    wheel = next(out.glob("gate-*.whl"))
    sdist = next(out.glob("gate-*.tar.gz"))
    venv = out / "venv"
    sh(sys.executable, "-m", "venv", str(venv))
    requirements = out / "requirements.txt"
    sh(UV, "export", "-q", "--frozen", "--no-emit-project", "--format", "requirements-txt",
       "-o", str(requirements))  # fmt: skip
    python = str(venv / "bin" / "python")
    sh(UV, "pip", "install", "-q", "--python", python, "--require-hashes", "-r", str(requirements))
    sh(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel))
    return {"wheel": wheel, "sdist": sdist, "bin": venv / "bin"}


def test_wheel_and_sdist_carry_the_package_data(built: dict[str, Path]) -> None:
    assert built["wheel"].name.startswith(f"gate-{__version__}-")
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    wanted_files = (
        "gate/lua/call_start-9.lua",
        "gate/default_rates.toml",
        "gate/switch/kamailio.cfg",
        "gate/web/static/billing.html",
        "gate/py.typed",
    )
    for wanted in wanted_files:
        assert wanted in names, sorted(n for n in names if not n.endswith(".py"))
    packages = {str(p.relative_to(ROOT)) for p in (ROOT / "gate").rglob("__init__.py")}
    missing = sorted(packages - names)
    assert not missing, f"add them to [tool.setuptools] packages in pyproject.toml: {missing}"
    with tarfile.open(built["sdist"]) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"lua/call_start-9.lua", "pyproject.toml", "gate/default_rates.toml"} <= members


def test_the_installed_gate_reports_its_version_and_no_harness(built: dict[str, Path]) -> None:
    gate = str(built["bin"] / "gate")
    done = subprocess.run([gate, "--version"], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"gate {__version__}", done
    done = subprocess.run([gate, "loadtest"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done
    assert "pip install 'gate[loadtest]'" in done.stderr, done.stderr


async def test_the_installed_gate_serves(
    built: dict[str, Path], redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "gate.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once; the wait below is async
            [str(built["bin"] / "gate"), "serve", "--port", str(port), "--data-dir",
             str(tmp_path / "var")],
            env=clean_env(GATE_PLATFORM_KEY=PLATFORM_KEY, GATE_REDIS_URL=redis_server.url),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            await wait_healthy(http, base, proc, log)
            async with http.get(f"{base}/healthz") as resp:
                assert (await resp.json())["version"] == __version__
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200, await resp.text()  # scripts loaded from the wheel
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()

"""docker-compose.yml is a valid Compose file that keeps every piece of state in a volume.

No container engine runs on CI's machines, so the file is validated against the Compose
specification's JSON schema (vendored by check-jsonschema) and read for what a deployment must
not lose; `make compose-check` is the end-to-end run for a machine that has an engine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def test_the_file_is_valid_against_the_compose_specification() -> None:
    done = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_store_keeps_its_data_in_a_named_volume() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) == {"redis", "postgres", "gate"}
    mounts = {name: {v.split(":")[1]: v.split(":")[0] for v in s.get("volumes", [])}
              for name, s in services.items()}  # fmt: skip
    assert mounts["redis"]["/data"] in spec["volumes"]
    assert mounts["postgres"]["/var/lib/postgresql/data"] in spec["volumes"]
    assert mounts["gate"]["/app/var"] in spec["volumes"]  # the image's VOLUME, named
    assert "--appendonly" in services["redis"]["command"]


def test_gate_archives_to_postgres_and_needs_its_secrets() -> None:
    gate = compose()["services"]["gate"]
    env = gate["environment"]
    assert env["GATE_REDIS_URL"] == "redis://redis:6379/0"
    assert env["GATE_DATABASE_URL"].startswith("postgresql://gate:${POSTGRES_PASSWORD}@postgres:")
    assert env["GATE_PLATFORM_KEY"].startswith("${GATE_PLATFORM_KEY:?")  # no empty key, ever
    assert set(gate["depends_on"]) == {"redis", "postgres"}
    assert all(d["condition"] == "service_healthy" for d in gate["depends_on"].values())


def test_the_image_declares_its_data_directory_and_installs_from_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'VOLUME ["/app/var"]' in dockerfile and "GATE_DATA_DIR=/app/var" in dockerfile
    assert "uv export --frozen" in dockerfile and "--require-hashes" in dockerfile
    assert "COPY pyproject.toml uv.lock" in dockerfile

"""The suite's own rule: under CI=true a skipped test fails, naming what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPING = """
import pytest

def test_needs_a_tool():
    pytest.skip("frobnicator not found: apt-get install frobnicator")

@pytest.mark.xfail(reason="a known gap, not a missing tool")
def test_known_gap():
    assert False
"""


def run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_skipping.py"
    test.write_text(SKIPPING)
    env = {**os.environ, "CI": ci}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         str(test)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_under_ci_a_skip_fails_and_names_the_tool(tmp_path: Path) -> None:
    done = run(tmp_path, "true")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 xfailed" in done.stdout, done.stdout
    assert "frobnicator not found: apt-get install frobnicator" in done.stdout
    assert "CI=true allows no skips" in done.stdout


def test_locally_a_skip_is_a_skip(tmp_path: Path) -> None:
    done = run(tmp_path, "")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped, 1 xfailed" in done.stdout, done.stdout

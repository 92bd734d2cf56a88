"""The CI speed guard's own rules, without running wrk (that is `python -m loadtest.guard`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import guard, wrkpair


def _wrk(requests: int, non2xx: int = 0, socket_errors: int = 0) -> dict[str, int]:
    return {"requests": requests, "duration_us": 1_000_000, "non2xx": non2xx,
            "socket_errors": socket_errors, "timeouts": 0, "sent": requests + 50,
            "p50_us": 1000, "p99_us": 5000, "max_us": 9000}  # fmt: skip


def test_more_than_a_thousandth_non_2xx_is_invalid_not_fast() -> None:
    cpu = {"gate": 0.0, "redis": 0.0}
    assert wrkpair.measured("gate", 0, _wrk(10_000, non2xx=10), cpu, cpu).valid
    bad = wrkpair.measured("gate", 0, _wrk(10_000, non2xx=11), cpu, cpu)
    assert not bad.valid and "non-2xx" in bad.problems[0]
    assert not wrkpair.measured("gate", 0, _wrk(10_000, socket_errors=1), cpu, cpu).valid
    assert not wrkpair.measured("gate", 0, _wrk(0), cpu, cpu).valid


def test_ratios_pair_each_gate_run_with_the_bare_run_of_its_round() -> None:
    cpu = {"gate": 0.0, "redis": 0.0}
    runs = [
        wrkpair.measured("bare", 0, _wrk(10_000), cpu, cpu),
        wrkpair.measured("gate", 0, _wrk(3_000), cpu, cpu),
        wrkpair.measured("gate", 1, _wrk(2_000), cpu, cpu),
        wrkpair.measured("bare", 1, _wrk(5_000), cpu, cpu),
        wrkpair.measured("gate", 2, _wrk(9_000, non2xx=100), cpu, cpu),  # invalid: left out
        wrkpair.measured("bare", 2, _wrk(10_000), cpu, cpu),
    ]
    assert wrkpair.Pair(runs, (0.0, 0.0, 0.0)).ratios("gate") == [0.3, 0.4]


def test_the_recorded_figure_is_a_ratio_with_its_reason() -> None:
    assert 0.05 < guard.recorded() < 1.0
    assert "why" in guard.RECORD.read_text()


def test_the_slowed_copy_spins_in_the_start_handler(tmp_path: Path) -> None:
    """The self-test's build: fails here when calls.py's start no longer has the anchor."""
    src = guard.slowed_copy(60, tmp_path)
    code = (
        "import inspect, time\n"
        "from gate.api import calls\n"
        "print('loadtest.guard --slow-us' in inspect.getsource(calls.start), calls.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(src)}, cwd=tmp_path)  # fmt: skip
    spins, where = out.stdout.split()
    assert spins == "True" and where.startswith(str(tmp_path))


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed: make test-env")
async def test_a_real_wrk_run_is_checked_and_errors_are_invalid(tmp_path: Path) -> None:
    """One second of wrk against gate serve: every 2xx is a live call holding money; the
    same load with a key Gate refuses is invalid, not fast."""
    [target] = await wrkpair.start_targets([("gate", None)], 2, tmp_path)
    try:
        good = await wrkpair.measure_gate(target, 0, 1, 10, tmp_path)
        assert good.valid, good.problems
        assert good.requests > 50 and good.server_us > 0
        live, reserved = await target.held()
        assert live >= good.requests and reserved > 0
        target.wallets[0].switch_key = "gk_not_a_key"
        target.wallets[1].switch_key = "gk_not_a_key"
        bad = await wrkpair.measure_gate(target, 1, 1, 10, tmp_path)
        assert not bad.valid and "non-2xx" in " ".join(bad.problems)
    finally:
        await target.close()

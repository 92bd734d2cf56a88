"""`python -m loadtest.bench` end to end, tiny: every phase and the open loop count their ops.

Only counts are checked: the figures themselves depend on the machine, so speed goals live
in what the command prints (README "Per-operation cost"), never in a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(120)
def test_bench_measures_every_operation_and_the_open_loop(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.bench", "--calls", "60", "--rounds", "1",
         "--wallets", "2", "--tick-s", "1", "--arrival-rate", "40", "--seconds", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    by_phase = {row["phase"]: row for row in result["rows"]}
    assert set(by_phase) == {"bare", "start", "answer", "tick", "heartbeat", "end"}
    for op in ("bare", "start", "answer", "heartbeat", "end"):
        assert (by_phase[op]["ops"], by_phase[op]["errors"]) == (60, 0), by_phase[op]
    assert by_phase["tick"]["ops"] >= 60  # every answered call ticked at least once
    assert by_phase["start"]["scripts_per_op"] >= 1
    assert by_phase["start"]["lua_calls_per_op"]["call_start"] == 1
    [loop] = result["open_loop"]
    assert (loop["starts"], loop["errors"]) == (40, {})
    assert loop["start_ms"]["p99"] is not None

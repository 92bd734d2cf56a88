"""The load-test harness with `--archive`: rows move to SQL mid-run, the books still balance."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_loadtest import run_harness


@pytest.mark.timeout(90)
def test_a_run_with_the_archiver_trimming_reconciles_and_keeps_redis_bounded(
    tmp_path: Path,
) -> None:
    code, r, output = run_harness(
        tmp_path,
        "--archive", "--workspaces", "2", "--balance", "1000", "--rate", "40",
        "--duration", "6", "--mean-call-s", "2", "--max-call-s", "4", "--tick-s", "1",
        "--buffer-s", "3", "--repeat-end-share", "0.2", "--unknown-end-share", "0.05",
    )  # fmt: skip
    assert code == 0, output
    rec = r["reconciliation"]
    assert rec["ok"] and rec["mismatched_micros"] == 0, rec["problems"]
    rows = sum(w["ledger_rows"] for w in rec["workspaces"])
    assert rows > 2 * 100  # more rows than the recent window of both workspaces
    memory = r["redis_memory"]
    assert memory["workspaces"] == 2
    # The window is 100 rows a workspace, plus what arrived since the last pass (1 s).
    assert memory["ledger_rows_in_redis"] < rows
    assert memory["ledger_rows_in_redis"] <= 2 * 100 + 2 * 60
    assert memory["bytes_per_workspace_avg"] > 0

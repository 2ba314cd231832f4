"""benchmarks/exact_gp_step.py runs (tiny sizes), so `make bench` never rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "exact_gp_step.py"


@pytest.mark.slow
def test_exact_gp_step_quick_writes_ratios(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "exact_gp_step.quick.json").read_text())
    for rows in data.values():
        ours = rows["ours: GaussianProcess"]
        assert ours["ratio"] == 1.0 and ours["median_ms"] > 0
        assert rows["ours: GaussianProcess(solver='cg')"]["median_ms"] > 0
        # GPyTorch rows are present only when it is installed (the `bench` extra)
        for name, row in rows.items():
            assert row["ratio"] > 0, name

"""benchmarks/svgp_step.py runs (a tiny configuration), so `make bench` never rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "svgp_step.py"


@pytest.mark.slow
def test_svgp_step_quick_writes_ratios(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "svgp_step.quick.json").read_text())
    ours = data["M=16"]["ours: SparseGaussianProcess"]
    assert ours["ratio"] == 1.0 and ours["median_ms"] > 0  # gpytorch is optional

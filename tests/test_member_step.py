"""benchmarks/member_step.py runs (a tiny configuration) and reports paired ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "member_step.py"


@pytest.mark.slow
def test_member_step_quick_writes_paired_ratios(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--clock", "cpu",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "member_step.quick.json").read_text())
    assert data["meta"]["clock"] == "cpu" and data["meta"]["ensemble_size"] == 4
    expected = {
        "mlp": ("nn.Linear", "LinearBatchEnsemble", "LinearRank1"),
        "cnn": ("nn.Conv2d", "Conv2dBatchEnsemble", "Conv2dRank1"),
    }
    for kind, names in expected.items():
        for what in ("train", "forward"):
            rows = data[f"{kind} {what}@8"]
            assert tuple(rows) == names
            base = rows[names[0]]["repeats_ms"]
            assert rows[names[0]]["ratio"] == 1.0
            for name in names[1:]:
                row = rows[name]
                paired = [t / b for t, b in zip(row["repeats_ms"], base, strict=True)]
                assert min(paired) <= row["ratio"] <= max(paired), name
                assert row["paired_range"] == [min(paired), max(paired)]
    assert data["targets"] == []  # targets are checked at batch 128 only

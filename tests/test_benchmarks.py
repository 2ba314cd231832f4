"""The benchmark harness runs (a tiny configuration), so `make bench` never rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "linear_step.py"


@pytest.mark.slow
def test_linear_step_quick_writes_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--batch-sizes", "32",
         "--predict-batch-sizes", "8", "--only", "reparameterization", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {(r["contender"], r["batch"]): r for r in data["training"]}
    base = rows[("nn.Linear", 32)]
    ours = rows[("ours: LinearReparameterization", 32)]
    assert base["ratio"] == 1.0 and base["median_ms"] > 0
    # the ratio is the median of paired per-repeat ratios: within the per-repeat range
    paired = [o / b for o, b in zip(ours["repeats_ms"], base["repeats_ms"], strict=True)]
    assert min(paired) <= ours["ratio"] <= max(paired)
    assert "LinearReparameterization" in {r["estimator"] for r in data["predict"]}
    assert all(r["speedup"] > 0 for r in data["predict"] if "speedup" in r)


@pytest.mark.slow
def test_cnn_lstm_step_quick_runs(tmp_path: Path) -> None:
    script = BENCH.parent / "cnn_lstm_step.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "cnn_lstm_step.quick.json").read_text())
    assert data["cnn"]["nn.Conv2d"]["ratio"] == 1.0 and data["lstm"]["nn.LSTM"]["ratio"] == 1.0
    for model, ours in (("cnn", "ours: Conv2dReparameterization"),
                        ("lstm", "ours: LSTMReparameterization")):  # fmt: skip
        assert data[model][ours]["median_ms"] > 0


@pytest.mark.slow
def test_flow_step_quick_runs(tmp_path: Path) -> None:
    script = BENCH.parent / "flow_step.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "flow_step.quick.json").read_text())
    # only ours is asserted on: zuko and nflows are skipped when not importable
    for kind, ours in (("autoregressive", "ours: MaskedAutoregressiveFlow"),
                       ("coupling", "ours: RealNVP")):  # fmt: skip
        assert data[kind][ours]["ratio"] == 1.0 and data[kind][ours]["median_ms"] > 0
        assert all("ratio" in row for row in data[kind].values())

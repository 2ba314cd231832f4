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


def _run_quick(script: str, tmp_path: Path, *args: str) -> dict:
    """Run ``benchmarks/<script>.py --quick`` and return its ``<script>.quick.json``."""
    proc = subprocess.run(
        [sys.executable, str(BENCH.parent / f"{script}.py"), "--quick", "--out", str(tmp_path),
         *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((tmp_path / f"{script}.quick.json").read_text())


def _assert_paired(rows: dict[str, dict], base: str) -> None:
    """``base`` has ratio 1; every ratio is the median of the paired per-repeat ratios to
    ``base``, so it lies within their range (peers that are not installed are absent)."""
    assert rows[base]["ratio"] == 1.0 and rows[base]["median_ms"] > 0
    for name, row in rows.items():
        paired = [t / b for t, b in zip(row["repeats_ms"], rows[base]["repeats_ms"], strict=True)]
        assert min(paired) <= row["ratio"] <= max(paired), name


@pytest.mark.slow
def test_cnn_lstm_step_quick_runs(tmp_path: Path) -> None:
    data = _run_quick("cnn_lstm_step", tmp_path)
    _assert_paired(data["cnn"], "nn.Conv2d")
    _assert_paired(data["lstm"], "nn.LSTM")
    assert "ours: Conv2dReparameterization" in data["cnn"]
    assert "ours: LSTMReparameterization" in data["lstm"]


@pytest.mark.slow
def test_flow_step_quick_runs(tmp_path: Path) -> None:
    data = _run_quick("flow_step", tmp_path)
    _assert_paired(data["autoregressive"], "ours: MaskedAutoregressiveFlow")
    _assert_paired(data["coupling"], "ours: RealNVP")


@pytest.mark.slow
def test_svgp_step_quick_runs(tmp_path: Path) -> None:
    data = _run_quick("svgp_step", tmp_path, "--threads", "1")
    _assert_paired(data["M=16"], "ours: SparseGaussianProcess")


@pytest.mark.slow
def test_exact_gp_step_quick_runs(tmp_path: Path) -> None:
    data = _run_quick("exact_gp_step", tmp_path, "--threads", "1")
    for rows in data.values():
        _assert_paired(rows, "ours: GaussianProcess")
        assert "ours: GaussianProcess(solver='cg')" in rows

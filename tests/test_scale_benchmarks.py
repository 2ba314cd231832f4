"""The compile benchmark and the prepared GPU check run (tiny configurations), so neither
rots on a machine without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_quick_on_cpu(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--quick",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "gpu_check.cpu.quick.json").read_text())
    # every family ran every check; quick mode compiles one family
    assert len(data["checks"]) >= 15
    for family, row in data["checks"].items():
        assert row["device vs cpu"] == row["bf16 autocast"] == "ok", family
    assert data["checks"]["LinearFlipout"]["compile"] == "ok"
    models = {(r["model"], r["bf16"]) for r in data["throughput"]}
    assert models == {(m, b) for m in ("bayesian", "deterministic") for b in (False, True)}
    assert all(r["tokens_per_s"] > 0 for r in data["throughput"])


def test_gpu_check_skips_cleanly_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the full check would run")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py")], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and "skipped" in proc.stdout


@pytest.mark.slow
def test_compile_step_quick_runs(tmp_path: Path) -> None:
    """aot_eager keeps the four compilations short; `make bench` uses inductor."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "compile_step.py"), "--quick", "--backend",
         "aot_eager", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "compile_step.quick.json").read_text())
    for kind, ours in (("mlp", "LinearReparameterization"), ("cnn", "Conv2dReparameterization")):
        compiled, eager = data[kind][f"{ours} compiled"], data[kind][f"{ours} eager"]
        assert compiled["median_ms"] > 0 and eager["median_ms"] > 0
        # the ratio is the median of paired per-repeat ratios: within their range
        pairs = [c / e for c, e in zip(compiled["repeats_ms"], eager["repeats_ms"], strict=True)]
        assert min(pairs) <= compiled["vs_eager"] <= max(pairs)

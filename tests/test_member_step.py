"""benchmarks/member_step.py runs (a tiny configuration) and reports paired ratios."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_util import run_quick


@pytest.mark.slow
def test_member_step_quick_writes_paired_ratios(tmp_path: Path) -> None:
    data, _ = run_quick("member_step", tmp_path)
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

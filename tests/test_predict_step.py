"""benchmarks/predict_step.py runs (a tiny configuration), reports paired ratios, checks
issue 22's prediction-cost targets at their batch sizes, and adds the ``trunk=None``
column exactly when ``bl.predict`` takes ``trunk=``."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from bench_util import assert_paired_within_range, benchmark_module, run_quick

import bayesian_layers as bl

ESTIMATORS = ("LinearReparameterization", "LinearFlipout", "LinearLocalReparameterization")
LAST_LAYER = (*ESTIMATORS, "Laplace last layer (kron)", "SNGP head")


def _module() -> ModuleType:
    return benchmark_module("predict_step")


@pytest.mark.slow
def test_quick_run_writes_paired_ratios(tmp_path: Path) -> None:
    data, stdout = run_quick("predict_step", tmp_path, "--num-samples", "8")
    meta = data["meta"]
    assert meta["num_samples"] == 8 and meta["clock"] == "cpu" and meta["threads"] == 1
    assert meta["trunk_keyword"] == _module().trunk_supported()
    suffixes = (": predict", ": predict trunk=None") if meta["trunk_keyword"] else (": predict",)
    for net in ("mlp", "lenet5"):
        rows = data[f"last_layer {net}@8"]
        expected = {"deterministic: one forward", "SNGP head: one forward"}
        expected |= {name + s for name in LAST_LAYER for s in suffixes}
        if _module().joint_supported():  # the whole-draw heads' per-example rows
            whole = ("LinearReparameterization", "Laplace last layer (kron)")
            expected |= {f"{name}: predict joint=False" for name in whole}
        assert set(rows) == expected
        assert next(iter(rows)) == "deterministic: one forward"
        assert_paired_within_range(rows, "deterministic: one forward")
    rows = data["all_bayesian mlp@4"]
    assert set(rows) == {f"{e}: {w}" for e in ESTIMATORS for w in ("predict", "loop")}
    assert_paired_within_range(rows, "LinearReparameterization: predict")
    assert data["targets"] == []  # checked at batch 256 / 16 only
    assert "targets: checked at batch 256 / 16 only" in stdout


def _rows(times: dict[str, list[float]]) -> dict[str, dict]:
    return {n: {"repeats_ms": t, "median_ms": sorted(t)[len(t) // 2]} for n, t in times.items()}


def test_targets_use_paired_ratios_at_the_target_batches() -> None:
    ps = _module()
    last = {"deterministic: one forward": [10.0, 20.0, 10.0], "SNGP head: one forward": [40.0] * 3}
    last |= {f"{e}: predict": [14.0, 28.0, 14.0] for e in ESTIMATORS}  # 1.4x: pass
    last["LinearFlipout: predict"] = [14.0, 32.0, 16.0]  # paired 1.4, 1.6, 1.6: fail
    last["LinearFlipout: predict trunk=None"] = [900.0] * 3  # information only
    last["Laplace last layer (kron): predict"] = [15.0, 30.0, 15.0]  # exactly 1.5x: pass
    last["SNGP head: predict"] = [59.0] * 3  # 5.9x the twin, 1.475x its own forward: pass
    last["Laplace last layer (kron): predict joint=False"] = [16.0, 32.0, 16.0]  # 1.6x: fail
    loop = {f"{e}: predict": [10.0, 10.0, 10.0] for e in ESTIMATORS}
    loop |= {f"{e}: loop": [20.0, 25.0, 30.0] for e in ESTIMATORS}  # 2.5x: pass
    loop["LinearFlipout: loop"] = [30.0, 19.0, 19.0]  # paired 3.0, 1.9, 1.9: fail
    results = {"last_layer mlp@256": _rows(last), "all_bayesian mlp@16": _rows(loop),
               "last_layer mlp@8": _rows(last), "all_bayesian mlp@4": _rows(loop)}  # fmt: skip
    checks = {c["check"]: c for c in ps.targets(results)}
    assert len(checks) == len(LAST_LAYER) + 1 + len(ESTIMATORS)  # only @256 and @16
    assert not any("trunk=None" in c or "@8" in c or "@4" in c for c in checks)
    fails = {c for c, v in checks.items() if not v["pass"]}
    assert fails == {
        "last_layer mlp@256 LinearFlipout: predict <= 1.5x deterministic: one forward",
        "last_layer mlp@256 Laplace last layer (kron): predict joint=False <= 1.5x "
        "deterministic: one forward",
        "all_bayesian mlp@16 LinearFlipout loop/predict >= 2.0x",
    }
    sngp = checks["last_layer mlp@256 SNGP head: predict <= 1.5x SNGP head: one forward"]
    assert sngp["value"] == pytest.approx(59 / 40)
    flipout = checks["last_layer mlp@256 LinearFlipout: predict <= 1.5x deterministic: one forward"]
    assert flipout["value"] == pytest.approx(1.6)  # median of the pairs, not of the medians


def test_trunk_column_follows_the_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    ps = _module()
    calls: list[dict] = []

    def with_trunk(
        model: torch.nn.Module, x: torch.Tensor, num_samples: int = 32, *, trunk: object = "auto"
    ) -> SimpleNamespace:
        calls.append({"trunk": trunk, "num_samples": num_samples})
        return SimpleNamespace(samples=torch.zeros(num_samples, len(x), 10))

    def without_trunk(
        model: torch.nn.Module, x: torch.Tensor, num_samples: int = 32
    ) -> SimpleNamespace:
        return SimpleNamespace(samples=torch.zeros(num_samples, len(x), 10))

    x = torch.zeros(2, 784)
    monkeypatch.setattr(bl, "predict", without_trunk)
    assert not ps.trunk_supported()
    monkeypatch.setattr(bl, "predict", with_trunk)
    assert ps.trunk_supported()
    steps = ps._predict_steps("M", torch.nn.Identity(), x, 4, ps.trunk_supported())
    assert list(steps) == ["M: predict", "M: predict trunk=None"]
    for step in steps.values():
        assert step().shape == (4, 2, 10)
    assert calls == [{"trunk": "auto", "num_samples": 4}, {"trunk": None, "num_samples": 4}]
    assert list(ps._predict_steps("M", torch.nn.Identity(), x, 4, False)) == ["M: predict"]

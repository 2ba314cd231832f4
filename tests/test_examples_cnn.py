"""The CNN examples (Figure 4's drop-in swap, Appendix A's ResNet-50) in quick mode."""

from __future__ import annotations

import importlib
import math

import pytest


def _import(name: str):  # noqa: ANN202 - the example module
    """Import ``examples/<name>.py`` (on pytest's pythonpath, pyproject.toml) when a test runs."""
    return importlib.import_module(name)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["reparameterization", "flipout"])
def test_drop_in_both_models_beat_chance(estimator: str):
    """Deterministic and Bayesian CNNs on digits: accuracy > 0.5 (chance 0.1) after 4 epochs."""
    result = _import("drop_in").main(["--quick", "--estimator", estimator])
    for prefix in ("det", "bayes"):
        assert result[f"{prefix}_accuracy"] > 0.5, result
        assert math.isfinite(result[f"{prefix}_nll"]), result
        assert 0.0 <= result[f"{prefix}_ece"] <= 1.0, result
    assert result["det_kl_per_example"] == 0.0
    assert result["bayes_kl_per_example"] > 0.0


@pytest.mark.slow
def test_bayesian_resnet50_quick():
    """Bayesian ResNet-50 has 1.9-2.1x its twin's parameters; every model trains to finite
    losses and gives the same output shape, the converted one included when available."""
    result = _import("bayesian_resnet50").main(["--quick"])
    assert 1.9 <= result["param_ratio"] <= 2.1, result["param_ratio"]
    shapes = result["shapes"]
    assert len(set(shapes.values())) == 1, shapes
    assert next(iter(shapes.values())) == (2, 1000)
    for name, history in result["losses"].items():
        assert history, name
        for nll, kl in history:
            assert math.isfinite(nll) and math.isfinite(kl), (name, nll, kl)
    if "converted_mean_gap" in result:  # bayesian_layers.convert.to_bayesian importable
        assert "to_bayesian(twin)" in shapes
        assert result["params_converted"] == result["params_bayesian"]
        assert result["converted_mean_gap"] < 1e-5

"""examples/deep_gp.py: quick mode on the bundled yacht split, and Figure 5's defaults on
scikit-learn's diabetes data (the zero-mean trap of issue 4)."""

from __future__ import annotations

import math
from pathlib import Path

import deep_gp  # examples/ is on pytest's pythonpath (pyproject.toml)
import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split

from bayesian_layers import layers

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_mode_on_bundled_yacht(tmp_path, capsys):
    data = ROOT / "tests" / "data" / "uci" / "yacht"
    result = deep_gp.main([str(data), "--quick", "--output-dir", str(tmp_path)])
    assert (tmp_path / "deep_gp.png").stat().st_size > 0
    assert set(result) == {"deep GP (3 layers)", "sparse GP (1 layer)", "exact GP"}
    assert all(math.isfinite(v) for r in result.values() for v in r.values()), result
    # the mean predictor's test RMSE on this split is the test targets' spread: ~15
    y = np.loadtxt(data / "data.txt")[np.loadtxt(data / "index_test_0.txt", dtype=int), -1]
    baseline = float(np.sqrt(((y - y.mean()) ** 2).mean()))
    assert result["exact GP"]["rmse"] < 0.2 * baseline
    assert result["deep GP (3 layers)"]["rmse"] < 0.5 * baseline
    assert "deep GP (3 layers)" in capsys.readouterr().out


def _diabetes() -> tuple[torch.Tensor, ...]:
    x, y = load_diabetes(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0)
    mu, sd, ym, ys = xtr.mean(0), xtr.std(0), ytr.mean(), ytr.std()

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.float32)

    return (
        t((xtr - mu) / sd),
        t((ytr - ym) / ys)[:, None],
        t((xte - mu) / sd),
        t((yte - ym) / ys)[:, None],
    )


@pytest.mark.slow
def test_figure5_defaults_beat_the_mean_predictor_on_diabetes():
    """Three layers, every default, 300 Adam steps: standardised test RMSE well below 1
    (the mean predictor; a linear regression gets 0.75 on this split). The same stack with
    zero mean functions in every layer stays much closer to the mean predictor."""
    x, y, xt, yt = _diabetes()
    rmse = {}
    for mean_fn in ("linear", "zeros"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Flatten(),
            layers.SparseGaussianProcess(10, 32, mean_fn=mean_fn),
            layers.SparseGaussianProcess(10, 32, mean_fn=mean_fn),
            layers.SparseGaussianProcess(1, 32, mean_fn=mean_fn),
        )
        lik = deep_gp.train_svgp(model, x, y, 300)
        rmse[mean_fn] = deep_gp.evaluate_svgp(model, lik, xt, yt, 1.0)["rmse"]
    assert rmse["linear"] < 0.8, rmse
    assert rmse["zeros"] > rmse["linear"] + 0.05, rmse

"""examples/bayesian_planning.py end to end in --quick mode (every part, tiny sizes)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("gymnasium")
import bayesian_planning  # noqa: E402 - examples/ is on pytest's pythonpath (pyproject.toml)


@pytest.mark.slow
def test_quick_mode_writes_table_and_plots(tmp_path, capsys):
    result = bayesian_planning.main(["--quick", "--output-dir", str(tmp_path)])
    for name in ("planning_training.png", "planning_open_loop.png", "planning_results.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert all(math.isfinite(v) for v in result.values()), result
    for kind in ("deterministic", "bayesian"):
        assert result[f"{kind}_all_p5"] <= result[f"{kind}_all_median"]
        assert result[f"{kind}_all_median"] <= result[f"{kind}_all_p95"]
    assert result["deterministic_kl_start"] == result["deterministic_kl_end"] == 0.0
    assert result["bayesian_kl_start"] > 0
    assert result["bayesian_kl_end"] != result["bayesian_kl_start"]  # the posterior moved
    out = capsys.readouterr().out
    assert "| deterministic |" in out and "| bayesian |" in out


@pytest.mark.slow
def test_quick_trajectory_sampling_with_flipout(tmp_path):
    """The trajectory-sampling planner (one frozen function per candidate) runs end to end."""
    argv = ["--quick", "--bayesian", "--planning", "trajectory", "--estimator", "flipout"]
    result = bayesian_planning.main([*argv, "--output-dir", str(tmp_path)])
    assert set(k.split("_")[0] for k in result) == {"bayesian"}
    assert (tmp_path / "planning_open_loop.png").stat().st_size > 0

"""examples/cox_process.py (Figure 9) in quick mode on the bundled coal-mining dates."""

from __future__ import annotations

import math

import cox_process  # examples/ is on pytest's pythonpath (pyproject.toml)
import pytest


def test_data_are_the_191_disasters_inside_the_window():
    years = cox_process.load_years()
    assert years.shape == (191, 1)
    assert cox_process.YEARS[0] <= float(years.min()) and float(years.max()) <= cox_process.YEARS[1]


@pytest.mark.slow
def test_quick_mode_beats_the_homogeneous_process(tmp_path, capsys):
    """The disaster rate fell around 1890, so an intensity that varies in time must
    predict held-out dates better than the constant-rate process."""
    result = cox_process.main(["--quick", "--output-dir", str(tmp_path)])
    assert (tmp_path / "cox_process.png").stat().st_size > 0
    assert all(math.isfinite(v) for v in result.values()), result
    assert result["cox"] > result["homogeneous"]
    assert 50 < result["prior_counts_mean"] < 1000  # prior draws by thinning: plausible sizes
    assert "held-out log-likelihood" in capsys.readouterr().out

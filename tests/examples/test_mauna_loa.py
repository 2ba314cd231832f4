"""examples/mauna_loa.py end to end in --quick mode: the fit improves the marginal
likelihood, the forecast is sane on the held-out decade, and the plot is written."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_mauna_loa_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import mauna_loa  # examples/ is on pytest's pythonpath (pyproject.toml)

    result = mauna_loa.main(["--quick", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert result["lml"] > result["lml_start"]  # type-II ML went uphill
    # 1992-2001 forecast from the months up to 1991: better than least squares on a
    # quadratic trend plus yearly harmonics (about 3.8 ppm RMSE)
    assert result["rmse"] < result["baseline_rmse"]
    assert 0.2 < result["coverage"] <= 1.0
    assert (tmp_path / "mauna_loa.png").stat().st_size > 10_000
    assert "fitted kernel" in out and "Periodic(length_scale=" in out

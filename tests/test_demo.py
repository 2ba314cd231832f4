"""Tests for the ``bayesian-layers demo`` command and its helpers (``bayesian_layers.demo``),
and for the command without the ``demo`` extra."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy import optimize, stats

import bayesian_layers as bl
from bayesian_layers import cli, demo
from bayesian_layers.demo import training

_NUMBER = r"(-?\d+\.\d+|-)"
_ROW = re.compile(
    rf"^(digits|diabetes)\s+(.+?)\s{{2,}}(max|min|≈0\.90)\s+{_NUMBER}\s+{_NUMBER}\s+"
    r"(bayesian|deterministic|tie|-)$"
)


def _parse_table(text: str) -> dict[tuple[str, str], tuple[float | None, float | None, str]]:
    rows = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            dataset, metric, _, det, bayes, better = m.groups()

            def num(s: str) -> float | None:
                return None if s == "-" else float(s)

            rows[dataset, metric] = (num(det), num(bayes), better)
    return rows


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_demo_prints_table_and_writes_figures(tmp_path: Path, capsys) -> None:
    threads = torch.get_num_threads()
    deterministic_algorithms = torch.are_deterministic_algorithms_enabled()
    assert cli.main(["demo", "--quick", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = _parse_table(out)
    assert len(rows) == 10, out
    for (dataset, metric), (det, bayes, _) in rows.items():
        for value in (det, bayes):
            assert value is None or math.isfinite(value), (dataset, metric, value)

    # Better than chance / the mean prediction, for both models.
    baseline = float(re.search(r"mean-prediction RMSE (\d+\.\d)", out).group(1))
    for model in (0, 1):
        assert rows["digits", "test accuracy"][model] > 0.8  # chance: 0.1
        assert rows["digits", "test NLL (nats)"][model] < math.log(10)  # uniform prediction
        assert 0 <= rows["digits", "ECE (15 bins)"][model] < 0.2
        assert 0 <= rows["digits", "ECE, temperature-scaled"][model] < 0.2
        assert rows["digits", "test NLL, temperature-scaled"][model] < math.log(10)
        assert rows["digits", "OOD AUROC, entropy"][model] > 0.6  # chance: 0.5
        assert rows["diabetes", "test RMSE (original units)"][model] < 0.95 * baseline
        assert 0.5 < rows["diabetes", "90% interval coverage"][model] <= 1.0
    assert rows["digits", "OOD AUROC, MI (B) vs entropy (D)"][1] > 0.6

    figures = re.findall(r"^figure: (.+\.png)$", out, flags=re.M)
    assert len(figures) == 2
    for path in figures:
        assert Path(path).parent == tmp_path
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "note: Bayesian model: layers.LinearFlipout" in out
    assert "bl.diagnose, Bayesian digits model on the validation split: Diagnosis:" in out
    assert "LinearFlipout" in out.split("bl.diagnose")[1] and "calibration (252 examples" in out
    assert re.search(r"^wall time: \d+\.\d s$", out, flags=re.M)
    # Global torch settings are restored.
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic_algorithms


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_same_seed_gives_same_table(tmp_path: Path) -> None:
    config = demo.DemoConfig(epochs=2, num_samples=4, out_dir=tmp_path, progress=False)
    first, second = demo.run_demo(config), demo.run_demo(config)
    assert [(r.deterministic, r.bayesian) for r in first.rows] == [
        (r.deterministic, r.bayesian) for r in second.rows
    ]


def test_mixture_quantile_matches_scipy() -> None:
    # K = 1: the Gaussian quantile.
    locs = torch.tensor([[0.0, 2.0, -1.0]], dtype=torch.float64)
    scale = torch.tensor(1.5, dtype=torch.float64)
    got = demo.mixture_quantile(locs, scale, 0.95)
    torch.testing.assert_close(got, torch.as_tensor(stats.norm.ppf(0.95, locs[0], 1.5)))
    # K = 3: root of the mixture CDF, found independently with brentq.
    locs = torch.tensor([[0.0], [1.0], [5.0]], dtype=torch.float64)
    for q in (0.05, 0.5, 0.95):

        def cdf_gap(t: float, q: float = q) -> float:
            return stats.norm.cdf(t, locs[:, 0].numpy(), 0.7).mean() - q

        ref = optimize.brentq(cdf_gap, -20, 30, xtol=1e-12)
        got = demo.mixture_quantile(locs, torch.tensor(0.7, dtype=torch.float64), q)
        assert got.item() == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize(
    ("goal", "det", "bayes", "better"),
    [
        ("max", 0.9, 0.95, "bayesian"),
        ("max", 0.95, 0.9, "deterministic"),
        ("min", 0.1, 0.2, "deterministic"),
        ("min", 0.1, 0.1, "tie"),
        ("≈0.90", 0.80, 0.93, "bayesian"),
        ("≈0.90", 0.89, 0.99, "deterministic"),
        ("max", None, 0.9, "-"),
    ],
)
def test_row_better(goal: str, det: float | None, bayes: float | None, better: str) -> None:
    assert demo.Row("d", "m", goal, det, bayes).better == better


@pytest.mark.parametrize("estimator", demo.ESTIMATORS)
def test_make_mlp_swaps_only_the_linear_layers(estimator: str) -> None:
    config = demo.DemoConfig(estimator=estimator)
    det = demo.make_mlp(5, (7, 6), 3, config, bayesian=False)
    bayes = demo.make_mlp(5, (7, 6), 3, config, bayesian=True)
    suffix = "".join(w.capitalize() for w in estimator.split("_"))
    assert [type(m).__name__ for m in det] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [type(m).__name__ for m in bayes] == [
        f"Linear{suffix}",
        "ReLU",
        f"Linear{suffix}",
        "ReLU",
        f"Linear{suffix}",
    ]
    x = torch.randn(4, 5)
    assert det(x).shape == bayes(x).shape == (4, 3)


def test_demo_estimators_are_spelled_as_to_bayesian_spells_them() -> None:
    assert set(demo.ESTIMATORS) == set(bl.convert.ESTIMATORS)
    with pytest.warns(DeprecationWarning, match="'flipout'"):
        model = demo.make_mlp(5, (7,), 3, demo.DemoConfig(estimator="Flipout"), bayesian=True)
    assert type(model[0]).__name__ == "LinearFlipout"
    with pytest.raises(ValueError, match="estimator"):
        demo.make_mlp(5, (7,), 3, demo.DemoConfig(estimator="dropout"), bayesian=True)


def test_cli_help_version_and_module_entry_point(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["demo", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "90% interval" in text and "%%" not in text
    assert "local_reparameterization" in text
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"bayesian-layers {bl.__version__}"
    run = subprocess.run(
        [sys.executable, "-m", "bayesian_layers", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert run.stdout.strip() == f"bayesian-layers {bl.__version__}"


def test_cli_rejects_bad_arguments(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["demo", "--kl-weight", "-1"])
    assert "expected a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--estimator", "Dropout"])
    with pytest.raises(SystemExit):
        cli.main([])


def test_training_runs_without_tqdm(monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "tqdm", None)  # `import tqdm` now fails
    it = range(3)
    assert training._progress(it, "x", enabled=True) is it
    config = demo.DemoConfig(epochs=2, progress=True)
    model = demo.make_mlp(3, (4,), 2, config, bayesian=True)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    gen = torch.Generator().manual_seed(0)
    epoch, val = demo.fit(
        model, (x, y), (x, y), config, dataset="digits", bayesian=True, generator=gen, desc="t"
    )
    assert epoch in (1, 2) and math.isfinite(val)


# ------------------------------------------------------------------ without the demo extra
_EXTRA = ("sklearn", "matplotlib", "tqdm")
_INSTALL = "pip install 'bayesian-layers[demo]'"


def _command_without_extra(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m bayesian_layers ARGV`` in a process where the extra's modules do not import
    (``sys.modules[name] = None`` makes ``import name`` raise ``ImportError``)."""
    code = (
        "import runpy, sys\n"
        f"sys.modules.update(dict.fromkeys({_EXTRA!r}))\n"
        f"sys.argv = ['bayesian-layers', *{list(argv)!r}]\n"
        "runpy.run_module('bayesian_layers', run_name='__main__', alter_sys=True)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_bayesian_layers_leaves_the_demo_and_its_extra_alone() -> None:
    code = (
        "import sys, bayesian_layers\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'matplotlib')"
        " or m.startswith(('bayesian_layers.demo', 'bayesian_layers.cli'))))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert run.stdout.strip() == "[]"


def test_command_without_the_extra_helps_and_names_the_extra() -> None:
    """``--help`` and ``--version`` need only torch and numpy; ``demo`` exits with status 1
    and one line naming the missing modules and the install command, no traceback."""
    help_ = _command_without_extra("--help")
    assert help_.returncode == 0, help_.stderr
    assert "demo" in help_.stdout
    version = _command_without_extra("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"bayesian-layers {bl.__version__}"
    run = _command_without_extra("demo", "--quick", "--no-progress")
    assert run.returncode == 1, run.stderr
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert "sklearn (scikit-learn)" in run.stderr and "matplotlib" in run.stderr
    assert _INSTALL in run.stderr


def test_demo_names_the_extra_before_training(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert cli.main(["demo", "--quick", "--out-dir", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("bayesian-layers demo: ")
    assert "sklearn (scikit-learn)" in captured.err and _INSTALL in captured.err
    assert "matplotlib" not in captured.err  # only what is missing
    assert not (tmp_path / "out").exists()  # nothing ran


def test_run_demo_raises_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert demo.missing_modules() == ["matplotlib"]
    with pytest.raises(ModuleNotFoundError, match=re.escape(_INSTALL)) as err:
        demo.run_demo(demo.DemoConfig(epochs=1, progress=False))
    assert err.value.name == "matplotlib"


def test_old_module_paths_still_import(monkeypatch) -> None:
    """``bayesian_layers.demo`` (now a package) keeps its names; ``demo_plots`` moved."""
    import importlib

    assert callable(demo.run_demo) and demo.DemoConfig().estimator in demo.ESTIMATORS
    monkeypatch.delitem(sys.modules, "bayesian_layers.demo_plots", raising=False)
    with pytest.warns(DeprecationWarning, match="demo.plots"):
        old = importlib.import_module("bayesian_layers.demo_plots")
    assert old.plot_reliability is demo.plot_reliability

"""Every example runs with --quick in a subprocess, so examples never rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "examples").glob("*.py")
    if not p.stem.startswith("_")
)  # "_name.py": helpers shared by examples, not examples


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"drop_in_swap.py", "variational_dense.py"}


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_quick(path: Path):
    proc = subprocess.run(
        [sys.executable, str(path), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "an example prints what it measured"


def test_drop_in_swap_learns():
    """Both the deterministic and the Bayesian MLP beat chance (0.1) by far after 3 epochs."""
    import drop_in_swap  # examples/ is on pytest's pythonpath (pyproject.toml)

    for argv in (
        ["--quick"],
        ["--quick", "--deterministic"],
        ["--quick", "--estimator", "local_reparameterization"],
    ):
        result = drop_in_swap.main(argv)
        assert result["accuracy"] > 0.8, (argv, result)

"""docs/training.md, "Uncertainty that pays": every ```python block runs as written, and
its program prints a diagnosis, a fitted temperature and a test ECE."""

from __future__ import annotations

import re

import pytest
from docs_util import DOCS, python_blocks

PAGE = DOCS / "training.md"
SECTION = "Uncertainty that pays: N, priors, diagnostics, calibration"
BLOCKS = python_blocks(PAGE, SECTION)


def test_the_section_has_a_program() -> None:
    assert len(BLOCKS) >= 1


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_block_runs_as_written(code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, f"{PAGE}:{SECTION}", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert "Diagnosis: 2 Bayesian layers" in out and "calibration (300 examples" in out
    temperature = float(re.search(r"temperature (\d+\.\d+)", out).group(1))
    assert 0.05 < temperature < 20
    ece = float(re.search(r"test ECE (\d+\.\d+)", out).group(1))
    assert 0 <= ece < 0.15

"""docs/training.md, "Prediction at near-deterministic cost": every ```python block runs
as written; the declared trunk gives the uncached samples for a fixed seed."""

from __future__ import annotations

import pytest
from docs_util import DOCS, python_blocks

PAGE = DOCS / "training.md"
SECTION = "Prediction at near-deterministic cost"
BLOCKS = python_blocks(PAGE, SECTION)


def test_the_section_has_a_program() -> None:
    assert len(BLOCKS) == 1


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_block_runs_as_written(code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, f"{PAGE}:{SECTION}", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert "torch.Size([64, 32, 10])" in out
    assert "cached == uncached: True" in out
